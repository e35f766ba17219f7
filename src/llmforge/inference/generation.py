"""Text generation with a KV cache: greedy, temperature, top-k, top-p, stop tokens."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmforge.adapters.base import ModelAdapter
from llmforge.data.chat_templates import prompt_ids, resolve_chat_format, stop_token_ids
from llmforge.device import model_device
from llmforge.errors import ChatTemplateError, CheckpointError, ConfigError, DataError
from llmforge.untrusted import unicode_problem


@dataclass
class SamplingOptions:
    """How to pick each next token.

    Attributes:
        max_new_tokens: Stop after this many new tokens.
        temperature: 0 means greedy (argmax); higher is more random.
        top_k: Keep only the k most likely tokens (None or 0 = all).
        top_p: Keep the smallest set whose probability reaches p (None or 1.0 = all).
        seed: Seed of the sampling generator (None = nondeterministic).
        stop_token_ids: Ids that end generation (not emitted). EOS is added by default.
    """

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_token_ids: Sequence[int] = field(default_factory=tuple)

    def check(self) -> None:
        """Raise ``ConfigError`` for values that make no sense."""
        if self.max_new_tokens < 0:
            raise ConfigError("--max-new-tokens must be 0 or more.", "Pass e.g. 200.")
        # NaN compares false with everything: test for the valid range, never for the invalid.
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(
                f"--temperature must be a finite number, 0 (greedy) or more, not "
                f"{self.temperature}.",
                "Pass e.g. 0.8.",
            )
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(
                f"--top-k must be 0 (off) or more, not {self.top_k}.", "Pass e.g. 40."
            )
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1], not {self.top_p}.", "Pass e.g. 0.9.")


def check_text_option(option: str, value: str | None) -> None:
    """Refuse an option's text that is not valid UTF-8 (a shell passes any bytes).

    Raises:
        ConfigError: If ``value`` holds a byte that is not UTF-8 (or a lone surrogate).
    """
    problem = unicode_problem(value) if value else None
    if problem is not None:
        raise ConfigError(
            f"{option} is not valid UTF-8 text: it holds {problem}.",
            "Pass UTF-8 text; `locale` shows whether the terminal uses UTF-8 (e.g. C.UTF-8).",
        )


def pick_next(logits: torch.Tensor, opts: SamplingOptions, gen: torch.Generator | None) -> int:
    """Choose the next id from last-position logits (V,).

    Raises:
        CheckpointError: If the logits are NaN/inf (the weights diverged or are corrupt).
    """
    if not bool(torch.isfinite(logits).any()) or bool(torch.isnan(logits).any()):
        raise CheckpointError(
            "The model produced NaN/inf logits: its weights diverged in training or are corrupt.",
            "Use an earlier checkpoint (`llmforge ckpt list`), or retrain with a lower "
            "learning_rate.",
        )
    if opts.temperature == 0:
        return int(torch.argmax(logits))
    return int(torch.multinomial(sampling_probs(logits, opts), 1, generator=gen))


def sampling_probs(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """The distribution (V,) that :func:`pick_next` samples from when ``temperature > 0``.

    The logits are divided by the temperature; ``top_k`` keeps the k largest; ``top_p`` then
    keeps the smallest set of the most likely tokens whose probability reaches p; the rest
    get probability 0 and the kept ones are renormalised (softmax).
    """
    logits = logits.float() / opts.temperature
    if opts.top_k:
        k = min(opts.top_k, logits.size(-1))
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p is not None and opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= opts.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


@torch.no_grad()
def stream_ids(
    adapter: ModelAdapter, prompt_ids: Sequence[int], opts: SamplingOptions
) -> Iterator[int]:
    """Yield new token ids one at a time, reusing the KV cache between steps.

    When the sequence reaches the model's context limit, the cache is rebuilt from the most
    recent tokens (a sliding window), so generation can run longer than the context.
    """
    opts.check()
    model = adapter.model
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(opts.seed) if opts.seed is not None else None
    stops = set(opts.stop_token_ids) | set(adapter.stop_token_ids())
    ids = list(prompt_ids) or adapter.tokenizer.encode("\n") or [0]
    limit = adapter.max_context
    dev = model_device(model)
    try:
        window = ids[-limit:] if limit else ids
        logits, cache = adapter.generation_step(torch.tensor([window], device=dev), None)  # (1, V)
        cached = len(window)
        for _ in range(opts.max_new_tokens):
            nxt = pick_next(logits[0].cpu(), opts, gen)  # the sampler's generator is on the CPU
            if nxt in stops:
                return
            yield nxt
            ids.append(nxt)
            if limit and cached + 1 > limit:
                window = ids[-(limit // 2) :]  # restart from the recent half
                logits, cache = adapter.generation_step(torch.tensor([window], device=dev), None)
                cached = len(window)
            else:
                logits, cache = adapter.generation_step(torch.tensor([[nxt]], device=dev), cache)
                cached += 1
    finally:
        model.train(was_training)


def generate_text(adapter: ModelAdapter, prompt: str, opts: SamplingOptions) -> str:
    """The completion of ``prompt`` (without the prompt itself)."""
    ids = list(stream_ids(adapter, adapter.tokenizer.encode(prompt), opts))
    return adapter.tokenizer.decode(ids)


def iter_text(tokenizer: Any, ids: Iterable[int]) -> Iterator[str]:
    """Decode streamed ids into text pieces, holding back incomplete multi-byte characters."""
    got: list[int] = []
    shown = ""
    for nxt in ids:
        got.append(nxt)
        # Decode the whole completion each time: multi-byte tokens only become text together.
        text = tokenizer.decode(got)
        if not text.endswith("\ufffd"):
            yield text[len(shown) :]
            shown = text
    rest = tokenizer.decode(got)[len(shown) :]
    if rest:
        yield rest


class ChatSession:
    """A conversation with a model, rendered with the template it was trained with.

    The template is the one recorded in a checkpoint's ``meta.json`` (``chat``), else the
    tokenizer's own, else ChatML; its end-of-turn token ends every reply.

    Args:
        adapter: The model.
        meta: The checkpoint's ``meta.json`` or the registry entry (as a dict).
        system: An optional system message.

    Raises:
        ConfigError: If the model's tokenizer cannot render a chat (char-level models).
    """

    def __init__(self, adapter: ModelAdapter, meta: dict[str, Any], system: str | None) -> None:
        self.adapter = adapter
        try:
            self.format = resolve_chat_format(adapter.tokenizer, None, meta.get("chat"))
        except ChatTemplateError:
            raise
        except DataError as e:
            raise ConfigError(
                f"--chat needs a chat-capable model: {e.message}",
                "Generate with --prompt instead, or use a fine-tuned registry model.",
            ) from None
        adapter.add_stop_token_ids(stop_token_ids(adapter.tokenizer, self.format))
        self.messages: list[dict[str, str]] = []
        if system:
            self.messages.append({"role": "system", "content": system})

    def reply(self, message: str, opts: SamplingOptions) -> Iterator[str]:
        """Stream the reply to ``message`` as text pieces; the turn is kept in the history."""
        self.messages.append({"role": "user", "content": message})
        ids = prompt_ids(self.adapter.tokenizer, self.messages, self.format)
        pieces: list[str] = []
        for piece in iter_text(self.adapter.tokenizer, stream_ids(self.adapter, ids, opts)):
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
