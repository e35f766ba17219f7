"""Tokenized data kept between runs, so that a second run on the same rows starts at once.

Tokenizing is the slow part of preparing data (a chat template rendered per conversation:
about a millisecond each, so minutes for a 100k-row hub dataset), and it is a pure function of
the rows, the tokenizer, the chat template and ``train_on_prompt``. :class:`TokenCache` keeps
its result in ``<workspace>/.cache/tokenized/``, one safetensors file per entry, named by the
sha256 of everything the ids depend on (:func:`entry_key`): the records themselves (canonical
JSON, so a moved hub revision with other rows is another entry), the tokenizer's full
definition (:func:`tokenizer_fingerprint`), the template and the encoding settings. Entries
hold the untruncated encodings, so one entry serves every ``block_size``.

Entries are derived data: one that cannot be read, or whose contents do not fit what is
asked (record count, lengths, id range), is ignored and rebuilt, so a damaged or forged entry
can cost a re-tokenization, never a wrong batch shape or an id outside the vocabulary. Nothing
is written until :meth:`TokenCache.commit`, which the run calls once it exists: a refused run
writes nothing here either. Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmforge.fsutil import atomic_write_bytes

CACHE_VERSION = 1  # bump when an encoding changes meaning: old entries are then never read
FOLDER = Path(".cache") / "tokenized"
Encoded = tuple[list[int], list[bool]]  # one record's ids and, per id, whether it is trained


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """The sha256 of a Hugging Face tokenizer's whole definition (vocabulary, merges,
    normalizer, pre- and post-processor, added and special tokens); None for tokenizers that
    are cheap to run (the char-level one), which are not cached."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        return None
    cached = getattr(tokenizer, "_llmforge_fingerprint", None)
    if isinstance(cached, str):
        return cached
    digest = hashlib.sha256(type(hf).__name__.encode())
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:  # a slow tokenizer: its vocabulary and special tokens decide its ids
        digest.update(json.dumps(sorted(hf.get_vocab().items())).encode("utf-8"))
    special = {
        "eos": hf.eos_token_id,
        "bos": hf.bos_token_id,
        "pad": hf.pad_token_id,
        "special": sorted(str(t) for t in hf.all_special_tokens),
    }
    digest.update(json.dumps(special, sort_keys=True).encode("utf-8"))
    fingerprint = digest.hexdigest()
    with contextlib.suppress(AttributeError):  # fingerprinted once per tokenizer object
        tokenizer._llmforge_fingerprint = fingerprint
    return fingerprint


def entry_key(tokenizer_fp: str, settings: dict[str, Any], records: Sequence[Any]) -> str:
    """The name of the entry holding ``records`` encoded by that tokenizer with ``settings``
    (the chat template, ``train_on_prompt``, the kind of encoding)."""
    digest = hashlib.sha256(f"llmforge-tokenized-v{CACHE_VERSION}\n{tokenizer_fp}\n".encode())
    digest.update(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    for r in records:
        line = json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest.update(b"\n" + line.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


class TokenCache:
    """Encodings read from, and (at :meth:`commit`) written to, one workspace's cache.

    Args:
        root: The workspace root; None turns the cache off (every lookup misses, nothing
            is ever written).
    """

    def __init__(self, root: Path | None) -> None:
        self.folder = root / FOLDER if root is not None else None
        self._pending: dict[str, list[Encoded]] = {}
        self.hits = 0  # records read from the cache
        self.misses = 0  # records tokenized

    def encode_all(
        self,
        tokenizer: Any,
        settings: dict[str, Any],
        records: Sequence[Any],
        encode: Callable[[Any], Encoded],
    ) -> list[Encoded]:
        """``[encode(r) for r in records]``, from the cache when an entry holds them.

        Errors of ``encode`` propagate; nothing is remembered for a list that failed.
        """
        fp = tokenizer_fingerprint(tokenizer) if self.folder is not None else None
        if fp is None:
            return [encode(r) for r in records]
        key = entry_key(fp, settings, records)
        vocab = len(tokenizer.hf)
        found = self._pending.get(key) or self._read(key, len(records), vocab)
        if found is not None:
            self.hits += len(records)
            return found
        encoded = [encode(r) for r in records]
        self.misses += len(records)
        self._pending[key] = encoded
        return encoded

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.safetensors"

    def _read(self, key: str, count: int, vocab: int) -> list[Encoded] | None:
        """The entry's encodings, or None when it is absent or does not fit (rebuilt then)."""
        path = self._path(key)
        if not path.is_file():
            return None
        import torch
        from safetensors.torch import load

        try:
            tensors = load(path.read_bytes())
            ids, trained, lengths = tensors["ids"], tensors["trained"], tensors["lengths"]
        except Exception:  # any damage: re-tokenize (the entry is derived data)
            return None
        # ids, trained: [total] (int32, uint8); lengths: [count] (int64), summing to total
        if (
            ids.dtype != torch.int32
            or trained.dtype != torch.uint8
            or lengths.dtype != torch.int64
            or ids.dim() != 1
            or trained.shape != ids.shape
            or lengths.shape != (count,)
            or bool((lengths < 0).any())
            or int(lengths.sum()) != ids.numel()
            or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab))
        ):
            return None
        out, start = [], 0
        id_list, mask = ids.tolist(), [bool(b) for b in trained.tolist()]
        for n in lengths.tolist():
            out.append((id_list[start : start + n], mask[start : start + n]))
            start += n
        return out

    def commit(self) -> None:
        """Write the entries tokenized since this cache was made (atomically, one file each).

        A cache that cannot be written (a read-only or full disk) is skipped: the next run
        tokenizes again, and nothing about this run changes.
        """
        if self.folder is None:
            return
        import torch
        from safetensors.torch import save

        for key, encoded in self._pending.items():
            flat_ids = [i for ids, _ in encoded for i in ids]
            flat_mask = [m for _, mask in encoded for m in mask]
            blob = save(
                {
                    "ids": torch.tensor(flat_ids, dtype=torch.int32),
                    "trained": torch.tensor(flat_mask, dtype=torch.uint8),
                    "lengths": torch.tensor([len(ids) for ids, _ in encoded], dtype=torch.int64),
                },
                metadata={"format": "llmforge-tokenized", "version": str(CACHE_VERSION)},
            )
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(self._path(key), blob)
            except OSError:
                return
        self._pending.clear()

    def note(self) -> str | None:
        """One line for the start of a run: how much came from the cache."""
        if self.folder is None or not (self.hits or self.misses):
            return None
        where = os.path.join(".cache", "tokenized")
        if self.misses == 0:
            return f"Tokenized data: {self.hits:,} record(s) read from the cache ({where})."
        return (
            f"Tokenized data: {self.misses:,} record(s) tokenized and kept in {where} for the "
            f"next run{f'; {self.hits:,} read from the cache' if self.hits else ''}."
        )
