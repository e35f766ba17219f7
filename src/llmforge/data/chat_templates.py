"""Chat templates: choosing one, rendering conversations, and which tokens carry the loss.

A conversation is rendered with the model's own chat template (the tokenizer's
``chat_template``). A model without one (a base model) gets ChatML, Qwen's format with
``<|im_start|>`` / ``<|im_end|>``; the choice is recorded in checkpoints (``meta.json``
``chat``) and the template is saved with the checkpoint's tokenizer, so generation renders
prompts exactly as training did.

**Loss mask.** Each assistant turn is located by rendering the conversation up to it twice:
once ending in the generation prompt (``<|im_start|>assistant\\n``) and once including the
turn. The text between the two is the turn (content, end-of-turn token, trailing newline);
everything else is prompt. The pieces are tokenized one by one and concatenated, which is
exactly how generation sees them: the prompt tokenized on its own, then the model's tokens.

**Untrusted templates.** A template comes from a repository or a config: ``transformers``
renders it in Jinja's immutable sandbox (no attribute access to Python internals, bounded
ranges). Every failure (a syntax error, the template's own ``raise_exception(...)``, a sandbox
refusal, any error while rendering) becomes a :class:`ChatTemplateError` naming where the
template came from, and a template is tried on a small conversation as soon as it is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.errors import ChatTemplateError, DataError
from llmforge.untrusted import terminal_text, unicode_problem

# ChatML as Qwen writes it (without Qwen's default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatFormat:
    """The template a model is trained and prompted with.

    Attributes:
        template: The Jinja chat template.
        source: ``model`` (the tokenizer's own), ``chatml-default`` (the model had none) or
            ``config`` (``chat_template`` in the training config).
        stop_tokens: Tokens that end an assistant turn (end-of-turn first, then EOS).
        origin: Where the template came from, for messages (not recorded).
    """

    template: str
    source: str
    stop_tokens: tuple[str, ...]
    origin: str = "The chat template"

    def to_meta(self) -> dict[str, Any]:
        """The ``chat`` entry of a checkpoint's ``meta.json``."""
        return {
            "chat_template": self.template,
            "source": self.source,
            "stop_tokens": list(self.stop_tokens),
        }


def _template_text(configured: str) -> str:
    """``configured`` itself, or the content of the ``.jinja`` file it names."""
    if "{" in configured or not configured.endswith((".jinja", ".j2")):
        return configured
    path = Path(configured).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"Cannot read the chat template file {path} ({type(e).__name__}).",
            "Set chat_template to an existing UTF-8 .jinja file, a Jinja string, or 'chatml'.",
        ) from e


def _hf(tokenizer: Any) -> Any:
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        raise DataError(
            f"Chat and prompt/completion data need a model with a subword tokenizer; the "
            f"{tokenizer.identifier} tokenizer has no special tokens to end a turn with.",
            "Set model_name to a registry model (e.g. an imported Qwen), or train the custom "
            "Transformer on plain text (.txt or JSONL with a 'text' field).",
        )
    return hf


def _known_token(hf: Any, token: str) -> bool:
    tid = hf.convert_tokens_to_ids(token)
    return tid is not None and tid != hf.unk_token_id and hf.decode([tid]) == token


def resolve_chat_format(
    tokenizer: Any, configured: str | None = None, recorded: dict[str, Any] | None = None
) -> ChatFormat:
    """Pick the chat template and install it on ``tokenizer`` (so it is saved with it).

    Args:
        tokenizer: An ``HFTokenizer``.
        configured: The config's ``chat_template``: None (the model's own, else ChatML),
            ``"chatml"``, or a Jinja template.
        recorded: The ``chat`` entry of a checkpoint being resumed or loaded; it wins.

    Raises:
        DataError: If the tokenizer cannot express the template's special tokens.
        ChatTemplateError: If the template is not valid text, or fails on a small conversation.
    """
    hf = _hf(tokenizer)
    if recorded and recorded.get("chat_template"):
        template, source = recorded["chat_template"], str(recorded.get("source", "model"))
        origin = "The chat template recorded in the checkpoint (meta.json)"
    elif configured and configured != "chatml":
        template, source = _template_text(configured), "config"
        origin = (
            "The chat_template of the training config"
            if template == configured
            else f"The chat template file {configured}"
        )
    elif configured == "chatml" or not getattr(hf, "chat_template", None):
        template, source = CHATML_TEMPLATE, "config" if configured else "chatml-default"
        origin = "The built-in ChatML template"
    else:
        template, source = hf.chat_template, "model"
        where = getattr(tokenizer, "folder", None)
        origin = f"The chat template of the model's tokenizer ({where or tokenizer.identifier})"
    if not isinstance(template, str):
        raise ChatTemplateError(f"{origin} is not a string.", _TEMPLATE_HINT)
    problem = unicode_problem(template)
    if problem is not None:
        raise ChatTemplateError(
            f"{origin} is not valid Unicode text: it holds {problem}, and it is saved with "
            "every checkpoint.",
            _TEMPLATE_HINT,
        )
    if template == CHATML_TEMPLATE:
        missing = [t for t in CHATML_TOKENS if not _known_token(hf, t)]
        if missing:
            raise DataError(
                f"The model has no chat template, and its tokenizer lacks the ChatML tokens "
                f"{', '.join(missing)} needed for the default one.",
                "Set chat_template in the config to a Jinja template that uses the model's "
                "own special tokens.",
            )
    hf.chat_template = template
    stops = [t for t in END_OF_TURN_CANDIDATES if t in template and _known_token(hf, t)]
    if hf.eos_token and hf.eos_token not in stops:
        stops.append(hf.eos_token)
    # Try it now: a broken template fails here, with its origin, not deep inside a run.
    _render(hf, _PROBE, add_generation_prompt=False, origin=origin)
    _render(hf, _PROBE[:1], add_generation_prompt=True, origin=origin)
    return ChatFormat(template, source, tuple(stops), origin)


_PROBE = ({"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"})
_TEMPLATE_HINT = (
    "Fix the template, or set chat_template: chatml in the training config to use ChatML; "
    "templates run in Jinja's sandbox, which refuses access to Python internals."
)


def _template_error(e: Exception, origin: str) -> ChatTemplateError:
    import jinja2

    if isinstance(e, jinja2.TemplateSyntaxError):
        what = f"has a syntax error on line {e.lineno}: {_clip(e.message or '')}"
    elif isinstance(e, jinja2.exceptions.SecurityError):
        what = f"did something Jinja's sandbox refuses: {_clip(str(e))}"
    elif type(e) is jinja2.TemplateError:  # the template's own raise_exception(...)
        what = f"refused the conversation: {_clip(str(e))}"
    else:
        what = f"failed while rendering: {type(e).__name__}: {_clip(str(e))}"
    return ChatTemplateError(f"{origin} {what.rstrip('.')}.", _TEMPLATE_HINT)


def _clip(text: str, limit: int = 200) -> str:
    """A template's error text for a message: one line, printable, bounded."""
    text = terminal_text(" ".join(text.split()), keep_newlines=False)
    return text if len(text) <= limit else f"{text[:limit]}..."


def stop_token_ids(tokenizer: Any, fmt: ChatFormat) -> list[int]:
    """The ids of ``fmt.stop_tokens``."""
    hf = _hf(tokenizer)
    return [hf.convert_tokens_to_ids(t) for t in fmt.stop_tokens]


def _render(
    hf: Any,
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool,
    origin: str = "The chat template",
) -> str:
    if not messages:
        return ""
    try:
        text = hf.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # anything a template does wrong is the template's error
        raise _template_error(e, origin) from e
    if not isinstance(text, str):
        raise ChatTemplateError(f"{origin} did not render text.", _TEMPLATE_HINT)
    return text


def prompt_ids(
    tokenizer: Any, messages: Sequence[dict[str, str]], fmt: ChatFormat | None = None
) -> list[int]:
    """The ids that prompt the model for the next assistant turn after ``messages``.

    Raises:
        ChatTemplateError: If the template fails on ``messages``.
    """
    hf = _hf(tokenizer)
    origin = fmt.origin if fmt else "The chat template"
    return tokenizer.encode(_render(hf, messages, add_generation_prompt=True, origin=origin))


def encode_chat(
    tokenizer: Any, fmt: ChatFormat, messages: Sequence[dict[str, str]], train_on_prompt: bool
) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered conversation and, per token, whether it is trained.

    Every assistant turn is trained (content and end-of-turn token); with
    ``train_on_prompt`` every token is. A turn that the template ends without a stop token
    gets the first stop token (or EOS) appended.

    Raises:
        ValueError: If the template does not render conversations as growing prefixes.
        ChatTemplateError: If the template fails on ``messages``.
    """
    hf = _hf(tokenizer)
    full = _render(hf, messages, add_generation_prompt=False, origin=fmt.origin)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(hf, messages[:i], add_generation_prompt=True, origin=fmt.origin)
        through = _render(hf, messages[: i + 1], add_generation_prompt=False, origin=fmt.origin)
        if not (through.startswith(before) and full.startswith(through) and len(before) >= pos):
            raise ValueError("the chat template does not render conversations as prefixes")
        turn = through[len(before) :]
        if fmt.stop_tokens and not any(s in turn for s in fmt.stop_tokens):
            turn += fmt.stop_tokens[0]
        pieces += [(full[pos : len(before)], False), (turn, True)]
        pos = len(through)
    pieces.append((full[pos:], False))
    ids: list[int] = []
    trained: list[bool] = []
    for text, is_turn in pieces:
        if text:
            piece = tokenizer.encode(text)
            ids += piece
            trained += [is_turn or train_on_prompt] * len(piece)
    return ids, trained


def encode_completion(
    tokenizer: Any, prompt: str, completion: str, train_on_prompt: bool
) -> tuple[list[int], list[bool]]:
    """``prompt`` + ``completion`` + EOS as raw text (no template); the EOS is trained."""
    hf = _hf(tokenizer)
    p = tokenizer.encode(prompt)
    c = tokenizer.encode(completion)
    if hf.eos_token_id is not None:
        c.append(hf.eos_token_id)
    return p + c, [train_on_prompt] * len(p) + [True] * len(c)


def check_messages(messages: Any) -> str | None:
    """Why ``messages`` is not a valid conversation, or None when it is."""
    if not isinstance(messages, list):
        return "'messages' must be a list of {role, content} objects"
    if not messages:
        return "'messages' is empty"
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {j + 1} needs 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {j + 1} has unknown role {m['role']!r} (expected {', '.join(ROLES)})"
        if not isinstance(m["content"], str):
            return f"message {j + 1}: 'content' must be a string"
    if not any(m["role"] == "assistant" for m in messages):
        return "no 'assistant' message (nothing to learn from)"
    return None
