"""The ``tokenizer.ggml.*`` metadata of a GGUF file, read from a Hugging Face folder.

Only the files are read (``tokenizer.json``, ``tokenizer_config.json``, ``config.json``,
``generation_config.json``); no ``transformers`` tokenizer is built. The layout follows
llama.cpp's ``convert_hf_to_gguf.py`` (``get_vocab_base`` / ``gguf.SpecialVocab``) with one
deliberate difference: the stop tokens.

**Stop tokens.** ``convert_hf_to_gguf.py`` takes EOS from ``tokenizer_config.json``, which
for a ChatML fine-tune of a *base* Qwen is ``<|endoftext|>``; the fine-tune ends its turns
with ``<|im_end|>``, and llama.cpp / Ollama run past the answer. The checkpoint's
``generation_config.json`` lists the ids generation stops at; of those, the one the chat
template writes right after an assistant message is the turn end. It becomes
``eos_token_id`` and ``eot_token_id``; the next other stop id becomes ``eom_token_id`` (all
three are end-of-generation ids in llama.cpp, which has no list), and the whole list goes to
``eos_token_ids``, which Ollama reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from llmforge.adapters.gguf_mapping import GGUFMapping
from llmforge.errors import ExportError

# A placeholder assistant message; the text after it in a rendered chat shows the turn end.
_PROBE = "llmforge-probe-7f3a"


@dataclass
class VocabMeta:
    """Everything the exporter writes under ``tokenizer.*``."""

    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    eos: int
    stop_ids: list[int]
    bos: int | None = None
    pad: int | None = None
    add_bos: bool = False
    chat_template: str | list[dict[str, str]] | None = None
    eot: int | None = None
    eom: int | None = None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(
            f"{path.name} of the exported model is not readable JSON ({type(e).__name__}).",
            "The checkpoint's files are damaged; export another checkpoint.",
        ) from e
    return data if isinstance(data, dict) else {}


def _check_pre_tokenizer(tok: dict[str, Any], arch: GGUFMapping) -> None:
    """Refuse a tokenizer that llama.cpp's ``arch.pre_tokenizer`` would split differently."""
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(
            f"The tokenizer is a {model.get('type')} model; GGUF export supports byte-level "
            "BPE tokenizers (tokenizer.ggml.model = gpt2).",
            "Export it as a Hugging Face folder (--format hf) instead.",
        )
    if arch.pre_tokenizer_regex is None:
        return
    pre = tok.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if regexes != [arch.pre_tokenizer_regex] or len(byte_level) != 1:
        raise ExportError(
            f"The tokenizer's pre-tokenizer is not {arch.name}'s (a Split on its regex, then "
            f"ByteLevel), so llama.cpp's {arch.pre_tokenizer!r} would split text differently.",
            "Export a model that uses its architecture's own tokenizer, or export it as a "
            "Hugging Face folder (--format hf).",
        )


def _merges(model: dict[str, Any]) -> list[str]:
    merges = model.get("merges") or []
    if merges and isinstance(merges[0], list):
        # tokenizers >= 0.20 writes pairs; GGUF wants "a b" with spaces inside a part
        # shifted to U+0120 (as gguf.SpecialVocab does).
        return [" ".join(p.replace(" ", "\u0120") for p in pair) for pair in merges]
    return [str(m) for m in merges]


def _looks_special(text: str) -> bool:
    return text.startswith("<|") and text.endswith("|>")


def _token_table(tok: dict[str, Any], n_rows: int) -> tuple[list[str], list[int]]:
    """Token strings and types for ids 0..n_rows-1; ids the tokenizer lacks are ``[PAD{i}]``."""
    vocab: dict[str, int] = dict((tok.get("model") or {}).get("vocab") or {})
    added = {a["id"]: a for a in tok.get("added_tokens") or []}
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    by_id.update({i: a["content"] for i, a in added.items()})
    if by_id and max(by_id) >= n_rows:
        raise ExportError(
            f"The tokenizer has ids up to {max(by_id)} but the embedding has {n_rows} rows.",
            "The tokenizer does not belong to this model's weights.",
        )
    tokens, types = [], []
    for i in range(n_rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].get("special") or _looks_special(by_id[i])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _token_id(entry: Any, ids: dict[str, int]) -> int | None:
    """The id of a ``tokenizer_config.json`` token entry (a string or ``{"content": ...}``)."""
    if isinstance(entry, dict):
        entry = entry.get("content")
    return ids.get(entry) if isinstance(entry, str) else None


def _as_ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _chat_template(folder: Path, tok_cfg: dict[str, Any]) -> Any:
    template = tok_cfg.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return template if isinstance(template, (str, list)) else None


def render_chat(template: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render a chat template with ``transformers``' own renderer (Jinja's immutable sandbox).

    Raises:
        Exception: Whatever the (untrusted) template raises; callers treat it as "no answer".
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
    )
    return rendered[0]


def turn_end_token(
    template: Any, candidates: list[int], tokens: list[str], types: list[int]
) -> int | None:
    """The token the chat template writes right after an assistant message.

    One of ``candidates`` (the checkpoint's stop ids) if it is there, else any control
    token; None when the template renders nothing recognisable after the message.
    """
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str):
        return None
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = render_chat(template, chat, add_generation_prompt=False)
    except Exception:  # an unrenderable template just gives no answer
        return None
    after = text.partition(_PROBE)[2] if _PROBE in text else ""
    control = [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    for pool in (candidates, control):
        hits = [i for i in pool if tokens[i] and after.startswith(tokens[i])]
        if hits:
            return max(hits, key=lambda i: len(tokens[i]))
    return None


def stop_tokens(
    stops: list[int], turn_end: int | None
) -> tuple[int, int | None, int | None, list[int]]:
    """(eos, eot, eom, all stop ids) from the checkpoint's stop ids and the turn end.

    EOS is the turn end when the checkpoint lists it (a chat fine-tune), else the
    checkpoint's first stop id; EOT is the turn end; EOM the next other stop id.
    """
    eos = turn_end if turn_end in stops else stops[0]
    rest = [i for i in [turn_end, *stops] if i is not None and i != eos]
    rest = list(dict.fromkeys(rest))
    others = [i for i in rest if i != turn_end]
    return eos, turn_end, (others[0] if others else None), [eos, *rest]


def _stop_ids(folder: Path, config: dict[str, Any], tok_cfg: dict[str, Any], ids: dict[str, int]):
    gen = _read_json(folder / "generation_config.json")
    ordered = (
        _as_ids(gen.get("eos_token_id"))
        + _as_ids(config.get("eos_token_id"))
        + [i for i in [_token_id(tok_cfg.get("eos_token"), ids)] if i is not None]
    )
    seen: list[int] = []
    for i in ordered:
        if i not in seen:
            seen.append(i)
    return seen, gen


def _first_id(n_rows: int, *values: Any) -> int | None:
    return next((v for v in values if isinstance(v, int) and 0 <= v < n_rows), None)


def _add_bos(tok: dict[str, Any], tok_cfg: dict[str, Any]) -> bool:
    if isinstance(tok_cfg.get("add_bos_token"), bool):
        return tok_cfg["add_bos_token"]
    post = tok.get("post_processor") or {}
    for proc in post.get("processors", [post]):
        single = proc.get("single") or []
        if proc.get("type") == "TemplateProcessing" and single and "SpecialToken" in single[0]:
            return True
    return False


def read_vocab(
    folder: Path,
    arch: GGUFMapping,
    n_rows: int,
    config: dict[str, Any],
    chat_template: str | None = None,
) -> VocabMeta:
    """The tokenizer metadata of the Hugging Face model in ``folder``.

    Args:
        folder: The model folder (``tokenizer.json`` and friends).
        arch: The architecture mapping (its pre-tokenizer).
        n_rows: Rows of the token embedding: the token list is padded to this size.
        config: The parsed ``config.json``.
        chat_template: The template the model was trained with (a checkpoint's ``meta.json``);
            None: the tokenizer's own.

    Raises:
        ExportError: If the tokenizer is missing, not byte-level BPE, splits text
            differently from the architecture's llama.cpp pre-tokenizer, or names no
            end-of-sequence token.
    """
    tok = _read_json(folder / "tokenizer.json")
    if not tok:
        raise ExportError(
            "The model has no tokenizer.json (a fast Hugging Face tokenizer), which GGUF "
            "export reads the vocabulary from.",
            "Export it as a Hugging Face folder (--format hf) instead.",
        )
    _check_pre_tokenizer(tok, arch)
    tok_cfg = _read_json(folder / "tokenizer_config.json")
    tokens, types = _token_table(tok, n_rows)
    ids = {t: i for i, t in enumerate(tokens)}
    stops, gen = _stop_ids(folder, config, tok_cfg, ids)
    stops = [i for i in stops if 0 <= i < n_rows]
    if not stops:
        raise ExportError(
            "Neither generation_config.json, config.json nor tokenizer_config.json names an "
            "end-of-sequence token.",
            "llama.cpp would stop at token 11 instead; add eos_token_id to generation_config.json.",
        )
    template = chat_template or _chat_template(folder, tok_cfg)
    eos, eot, eom, stop_ids = stop_tokens(stops, turn_end_token(template, stops, tokens, types))
    pad = _first_id(
        n_rows,
        _token_id(tok_cfg.get("pad_token"), ids),
        gen.get("pad_token_id"),
        config.get("pad_token_id"),
    )
    # No BOS at all: llama.cpp's gpt2 vocab would default to id 11, so name the document
    # boundary (Qwen's own convention: bos = <|endoftext|>). add_bos stays false.
    bos = _first_id(
        n_rows,
        config.get("bos_token_id"),
        _token_id(tok_cfg.get("bos_token"), ids),
        _token_id(tok_cfg.get("eos_token"), ids),
    )
    return VocabMeta(
        pre=arch.pre_tokenizer,
        tokens=tokens,
        types=types,
        merges=_merges(tok["model"]),
        eos=eos,
        eot=eot,
        eom=eom,
        stop_ids=stop_ids,
        bos=bos,
        pad=pad,
        add_bos=_add_bos(tok, tok_cfg),
        chat_template=template,
    )


def write_vocab(writer: gguf.GGUFWriter, meta: VocabMeta) -> None:
    """Add the ``tokenizer.*`` keys of ``meta`` to ``writer``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta.pre)
    writer.add_token_list(meta.tokens)
    writer.add_token_types(meta.types)
    writer.add_token_merges(meta.merges)
    writer.add_eos_token_id(meta.eos)
    if meta.eot is not None:
        writer.add_eot_token_id(meta.eot)
    if meta.eom is not None:
        writer.add_eom_token_id(meta.eom)
    # Ollama's engine reads this list (eos_token_id, then these) as its stop ids.
    writer.add_array("tokenizer.ggml.eos_token_ids", meta.stop_ids)
    if meta.bos is not None:
        writer.add_bos_token_id(meta.bos)
    if meta.pad is not None:
        writer.add_pad_token_id(meta.pad)
    writer.add_add_bos_token(meta.add_bos)
    writer.add_add_eos_token(False)
    if meta.chat_template is not None:
        writer.add_chat_template(meta.chat_template)
