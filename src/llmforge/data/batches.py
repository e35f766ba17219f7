"""From data files to the training and validation samplers of a run.

:func:`load_data` reads and checks the files (no tokenizer needed, so it runs before a
char-level tokenizer is built from the text); :func:`build_batches` tokenizes them for a
model. Text (``.txt``, JSONL ``text`` records) becomes one token stream sampled in random
windows; ``prompt-completion`` and ``chat`` records become examples whose loss covers only
the answers (see :mod:`llmforge.data.chat_templates`), packed several to a row where the
model supports it (``packing``, :mod:`llmforge.data.packing`), else padded
(:class:`llmforge.data.samplers.ExampleSampler`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmforge.adapters.base import ModelAdapter
from llmforge.config import TrainingConfig
from llmforge.data.chat_templates import (
    encode_chat,
    encode_completion,
    resolve_chat_format,
    stop_token_ids,
)
from llmforge.data.corpus import split_tokens
from llmforge.data.data_files import DataFile, read_data_file, skipped_warning
from llmforge.data.hub_data import alpaca_layout, read_hub_config, unused_hub_keys
from llmforge.data.hub_uri import is_hub_uri
from llmforge.data.packing import PackedExampleSampler
from llmforge.data.samplers import (
    Example,
    ExampleSampler,
    Sampler,
    WindowSampler,
    _seed_for,
    make_example,
)
from llmforge.data.token_cache import Encoded, TokenCache
from llmforge.errors import DataError

EXAMPLE_FORMATS = ("prompt-completion", "chat")


@dataclass
class LoadedData:
    """The training file and the optional validation file, read and checked."""

    train: DataFile
    val: DataFile | None
    warnings: list[str] = field(default_factory=list)
    hub: dict[str, Any] | None = None  # the lineage of hub datasets (meta.json data.hub)

    @property
    def format(self) -> str:
        return self.train.format

    @property
    def source(self) -> str:
        return self.train.source

    @property
    def sha256(self) -> str:
        """Fingerprint of the data (the training file's, combined with the validation one's)."""
        if self.val is None:
            return self.train.sha256
        return hashlib.sha256(f"{self.train.sha256}:{self.val.sha256}".encode()).hexdigest()

    def char_text(self) -> str:
        """All text, for building a char-level vocabulary.

        Raises:
            DataError: For prompt/completion and chat data (they need a subword tokenizer).
        """
        if self.format in EXAMPLE_FORMATS:
            raise DataError(
                f"{self.source} holds {self.format} records, which the from-scratch Transformer "
                "(char-level tokenizer, no end-of-turn token) cannot be trained on.",
                "Set model_name to a registry model (e.g. an imported Qwen), or use plain text "
                "(.txt, or JSONL with a 'text' field).",
            )
        files = [self.train] + ([self.val] if self.val else [])
        return "\n".join(_texts_joined(f) for f in files)


def _texts_joined(f: DataFile) -> str:
    return f.text if f.format == "text" else "\n".join(r["text"] for r in f.records)


def load_data(
    cfg: TrainingConfig, tokenizer: Any = None, recorded_hub: dict[str, Any] | None = None
) -> LoadedData:
    """Read ``data_path`` (and ``val_data_path``) in ``data_format``; an
    ``hf://datasets/...`` path is a hub dataset (:mod:`llmforge.data.hub_records`).

    Alpaca rows of a hub dataset use the chat template of ``tokenizer`` when it has one
    (or the config sets ``chat_template``), else the Stanford prompt layout; a resumed run
    keeps the layout of ``recorded_hub`` (its ``data.hub``).

    Raises:
        BadRecordError, DataError: For a missing, empty or malformed file (with line numbers).
        HubError: For a hub dataset that cannot be read (not found, gated, offline...).
    """
    hub = None
    if is_hub_uri(cfg.data_path) or is_hub_uri(cfg.val_data_path):
        layout = alpaca_layout(tokenizer, cfg.chat_template, recorded_hub)
        train, val, hub = read_hub_config(cfg, layout)
    else:
        unused_hub_keys(cfg)
        train = read_data_file(cfg.data_path, cfg.data_format, cfg.skip_bad_lines)
        val = None
        if cfg.val_data_path is not None:
            fmt = train.format if train.format != "text" else cfg.data_format
            val = read_data_file(cfg.val_data_path, fmt, cfg.skip_bad_lines)
    if val is not None and (
        (val.format in EXAMPLE_FORMATS or train.format in EXAMPLE_FORMATS)
        and val.format != train.format
    ):
        raise DataError(
            f"The validation file {val.source} holds {val.format} data but the training "
            f"file {train.source} holds {train.format} data.",
            "Use the same format for both.",
        )
    warnings = [w for f in (train, val) if f is not None and (w := skipped_warning(f))]
    return LoadedData(train, val, warnings, hub)


@dataclass
class Batches:
    """The samplers of a run and what to record about its data.

    Attributes:
        train: Training batches.
        val: Validation batches.
        sample_prompt: Ids that text samples start from.
        meta: The ``data`` entry of ``meta.json``.
        chat: The ``chat`` entry of ``meta.json`` (template, its source, stop tokens), or None.
        warnings: Skipped lines, truncated or dropped examples.
    """

    train: Sampler
    val: Sampler
    sample_prompt: list[int]
    meta: dict[str, Any]
    chat: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def _stream_ids(tokenizer: Any, f: DataFile, cache: TokenCache) -> list[int]:
    def encode(text: str) -> Encoded:
        ids = tokenizer.encode(text)
        return ids, [True] * len(ids)

    texts = [f.text] if f.format == "text" else [r["text"] for r in f.records]
    encoded = cache.encode_all(tokenizer, {"kind": "stream"}, texts, encode)
    if f.format == "text":
        return encoded[0][0]
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else tokenizer.encode("\n")
    ids: list[int] = []
    for part, _ in encoded:
        ids += part + sep
    return ids


def _window_batches(
    data: LoadedData, tokenizer: Any, cfg: TrainingConfig, block: int, cache: TokenCache
) -> Batches:
    ids = _stream_ids(tokenizer, data.train, cache)
    if data.val is None:
        split = split_tokens(ids, cfg.val_fraction, block)
        train_ids, val_ids = split.train, split.val
    else:
        train_ids = torch.tensor(ids, dtype=torch.long)
        val_ids = torch.tensor(_stream_ids(tokenizer, data.val, cache), dtype=torch.long)
        for name, part in (("training", train_ids), ("validation", val_ids)):
            if len(part) < block + 1:
                raise DataError(
                    f"The {name} data has {len(part)} tokens, fewer than block_size + 1 = "
                    f"{block + 1}.",
                    "Use more text or a smaller block_size.",
                )
    train = WindowSampler(train_ids, block, cfg.batch_size, cfg.seed)
    val = WindowSampler(val_ids, block, cfg.batch_size, cfg.seed)
    prompt = val_ids[: min(16, block // 2)].tolist()
    return Batches(train, val, prompt, {"tokens": {"train": len(train_ids), "val": len(val_ids)}})


def _split_records(
    data: LoadedData, cfg: TrainingConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if data.val is not None:
        return data.train.records, data.val.records
    records = data.train.records
    n_val = max(1, int(len(records) * cfg.val_fraction))
    if len(records) - n_val < 1:
        raise DataError(
            f"{data.source} holds {len(records)} valid record(s); at least 2 are needed to "
            "hold some out for validation.",
            "Add records, or give a separate validation file with val_data_path.",
        )
    g = torch.Generator().manual_seed(_seed_for(cfg.seed, "val-split"))
    order = torch.randperm(len(records), generator=g).tolist()
    held = set(order[:n_val])
    return (
        [r for i, r in enumerate(records) if i not in held],
        [r for i, r in enumerate(records) if i in held],
    )


def _one_system_prompt(records: list[dict[str, Any]]) -> str | None:
    """The system prompt every conversation opens with, when they all share one; else None."""
    prompts = set()
    for r in records:
        first = (r.get("messages") or [{}])[0]
        prompts.add(first.get("content") if first.get("role") == "system" else None)
        if len(prompts) > 1:
            return None
    prompt = next(iter(prompts), None)
    return prompt if isinstance(prompt, str) else None


def _encoder(
    data: LoadedData,
    adapter: ModelAdapter,
    cfg: TrainingConfig,
    recorded_chat: dict[str, Any] | None,
) -> tuple[Callable[[dict[str, Any]], Encoded], dict[str, Any] | None, dict[str, Any]]:
    """How a record becomes ids: (encode, the ``chat`` meta, what the ids depend on besides
    the tokenizer and the record, for the token cache)."""
    tok = adapter.tokenizer
    settings: dict[str, Any] = {"kind": data.format, "train_on_prompt": cfg.train_on_prompt}
    if data.format != "chat":
        return (
            lambda r: encode_completion(tok, r["prompt"], r["completion"], cfg.train_on_prompt),
            None,
            settings,
        )
    fmt = resolve_chat_format(tok, cfg.chat_template, recorded_chat)
    adapter.add_stop_token_ids(stop_token_ids(tok, fmt))
    chat_meta = fmt.to_meta()
    settings.update(template=fmt.template, stop_tokens=list(fmt.stop_tokens))
    system = _one_system_prompt(data.train.records)
    if system is not None:  # an export's Modelfile makes it the default (SYSTEM)
        chat_meta["system_prompt"] = system

    def encode(r: dict[str, Any]) -> Encoded:
        try:
            return encode_chat(tok, fmt, r["messages"], cfg.train_on_prompt)
        except ValueError as e:
            raise DataError(
                f"Cannot render a conversation of {data.source} with the chat template: {e}.",
                "Set chat_template: chatml in the config, or fix the model's template.",
            ) from e

    return encode, chat_meta, settings


def _example_batches(
    data: LoadedData,
    adapter: ModelAdapter,
    cfg: TrainingConfig,
    block: int,
    recorded_chat: dict[str, Any] | None,
    cache: TokenCache,
) -> Batches:
    tok = adapter.tokenizer
    encode, chat_meta, settings = _encoder(data, adapter, cfg, recorded_chat)
    train_records, val_records = _split_records(data, cfg)
    truncated = dropped = 0
    sets: list[list[Example]] = []
    for records in (train_records, val_records):
        examples = []
        for ids, trained in cache.encode_all(tok, settings, records, encode):
            truncated += len(ids) > block + 1
            ex = make_example(ids, trained, block)
            if ex is None:
                dropped += 1
            else:
                examples.append(ex)
        if not examples:
            raise DataError(
                f"No example of {data.source} has a trained token within block_size = {block}.",
                "Raise block_size, or shorten the prompts.",
            )
        sets.append(examples)
    warnings = []
    if truncated or dropped:
        warnings.append(
            f"{truncated} example(s) were longer than block_size + 1 = {block + 1} tokens and "
            f"were cut at the end (their end-of-turn token too); {dropped} example(s) kept no "
            "trained token and were dropped. Raise block_size to keep them whole."
        )
    hf = getattr(tok, "hf", None)
    pad = next(
        (i for i in (getattr(hf, "pad_token_id", None), tok.eos_token_id) if i is not None), 0
    )
    packing = _packing(adapter, cfg, warnings)
    # Validation stays padded either way: the same losses as `llmforge eval --data` computes.
    kind = PackedExampleSampler if packing else ExampleSampler
    train = kind(sets[0], block, cfg.batch_size, cfg.seed, pad)
    val = ExampleSampler(sets[1], block, cfg.batch_size, cfg.seed, pad)
    first = sets[1][0]
    k = int((first.labels != -100).nonzero()[0])
    prompt = first.input_ids[: k + 1].tolist()
    meta = {
        "examples": {"train": len(sets[0]), "val": len(sets[1])},
        "truncated": truncated,
        "dropped": dropped,
        "train_on_prompt": cfg.train_on_prompt,
        "packing": packing,
    }
    return Batches(train, val, prompt, meta, chat_meta, warnings)


def _packing(adapter: ModelAdapter, cfg: TrainingConfig, warnings: list[str]) -> bool:
    """Whether the examples are packed: ``packing`` and a model path that keeps them apart."""
    if not cfg.packing:
        return False
    if adapter.supports_packing():
        return True
    if "packing" in cfg.model_fields_set:  # asked for explicitly: say why it is not done
        warnings.append(
            f"packing: true is ignored: the {adapter.architecture} model cannot keep packed "
            "examples apart (its forward takes no per-example position ids, or its attention "
            "implementation does not read them); each example is padded instead."
        )
    return False


def build_batches(
    data: LoadedData,
    adapter: ModelAdapter,
    cfg: TrainingConfig,
    block: int,
    recorded_chat: dict[str, Any] | None = None,
    cache: TokenCache | None = None,
) -> Batches:
    """Tokenize ``data`` for ``adapter`` and build the samplers.

    For chat data this also installs the chat template on the tokenizer (saved with every
    checkpoint) and makes the end-of-turn token a stop token of the model.

    Args:
        recorded_chat: The ``chat`` entry of the checkpoint being resumed (its template wins).
        cache: Where tokenized records are looked up and remembered (written at its
            ``commit()``); None tokenizes everything and keeps nothing.

    Raises:
        DataError: If the data is too short or cannot be rendered for this model.
    """
    cache = cache or TokenCache(None)
    if data.format in EXAMPLE_FORMATS:
        out = _example_batches(data, adapter, cfg, block, recorded_chat, cache)
    else:
        out = _window_batches(data, adapter.tokenizer, cfg, block, cache)
    out.meta = {
        "source": data.source,
        "sha256": data.sha256,
        "format": data.format,
        "val_source": data.val.source if data.val else None,
        "skipped_lines": len(data.train.skipped) + (len(data.val.skipped) if data.val else 0),
        **out.meta,
        **({"hub": data.hub} if data.hub else {}),
    }
    out.warnings = data.warnings + out.warnings
    return out
