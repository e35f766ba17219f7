"""Tokenizers: the char-level one of the custom Transformer, and a model's native one.

Both are saved into every checkpoint (``tokenizer/``) as plain files, never pickles, so a
checkpoint always decodes with the tokenizer it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from llmforge.errors import CheckpointError
from llmforge.fsutil import atomic_write_json
from llmforge.untrusted import brief, load_json, unicode_problem

CHAR_VOCAB_FILE = "char_vocab.json"
UNKNOWN_CHAR = "\ufffd"  # what an id for an unseen character decodes to


@runtime_checkable
class Tokenizer(Protocol):
    """What training and generation need from a tokenizer."""

    kind: str  # "char", "native" or "override"
    identifier: str  # e.g. "char-level (97 symbols)" or "Qwen/Qwen2-0.5B"

    @property
    def vocab_size(self) -> int:
        """Number of ids the model's embedding must hold."""
        ...

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-sequence id, or None when the tokenizer has none."""
        ...

    def encode(self, text: str) -> list[int]:
        """Text to ids."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text."""
        ...

    def save(self, folder: Path) -> None:
        """Write the tokenizer's files into ``folder``."""
        ...


class CharTokenizer:
    """One id per character seen in the training text; id 0 stands for any unseen one.

    Args:
        chars: The vocabulary, ids 1..N in order (id 0 is reserved for unknown characters).
    """

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        if any(unicode_problem(c) for c in chars):  # could never be saved as UTF-8 JSON
            raise ValueError("chars must be valid Unicode (no lone surrogates)")
        self.chars = list(chars)
        self._ids = {c: i + 1 for i, c in enumerate(self.chars)}
        self.identifier = f"char-level ({len(self.chars)} symbols)"

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from every distinct character of ``text`` (sorted)."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def eos_token_id(self) -> int | None:
        return None

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        return [ids.get(c, 0) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        chars = self.chars
        n = len(chars)
        return "".join(chars[i - 1] if 0 < i <= n else UNKNOWN_CHAR for i in ids)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            folder / CHAR_VOCAB_FILE,
            {"type": "char", "version": 1, "unknown_id": 0, "chars": self.chars},
        )

    @classmethod
    def load(cls, folder: Path) -> CharTokenizer:
        """Read ``char_vocab.json`` from ``folder``.

        Raises:
            CheckpointError: If the file is missing or malformed.
        """
        path = folder / CHAR_VOCAB_FILE
        try:
            data = load_json(path.read_text(encoding="utf-8"))
            if data.get("type") != "char":
                raise ValueError("not a char vocabulary")
            return cls(data["chars"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"The char-level tokenizer file {path} is missing or malformed ({e}).",
                "The checkpoint is incomplete; use another checkpoint of the run.",
            ) from e


class HFTokenizer:
    """A Hugging Face tokenizer (a model's native one, or an override) behind the protocol.

    Args:
        folder: A folder with ``tokenizer.json`` / ``tokenizer_config.json``.
        kind: ``"native"`` or ``"override"``.
        identifier: Where it came from (a model id or name), for metadata and logs.
    """

    def __init__(self, folder: Path, kind: str = "native", identifier: str | None = None) -> None:
        from transformers import AutoTokenizer

        hint = (
            "The tokenizer files (tokenizer.json, tokenizer_config.json) are damaged or "
            "incomplete: re-import the model (`llmforge models validate` checks its files), or "
            "use another checkpoint or tokenizer folder."
        )
        try:
            # Never trust_remote_code: a tokenizer folder cannot run code on load.
            self.hf = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except Exception as e:  # the files are untrusted: any parse failure is theirs
            raise CheckpointError(
                f"Cannot load the tokenizer in {folder}: {type(e).__name__}: {brief(str(e), 200)}.",
                hint,
            ) from e
        # Without tokenizer.json transformers can build a tokenizer holding only the special
        # tokens, which turns every text into no ids at all ("the data has 0 tokens").
        if not self.hf.encode("Hello world 123", add_special_tokens=False):
            raise CheckpointError(
                f"The tokenizer in {folder} has no vocabulary: it turns text into no tokens "
                "(is tokenizer.json missing?).",
                hint,
            )
        self.kind = kind
        self.identifier = identifier or self.hf.name_or_path
        self.folder = folder

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(folder))


def load_tokenizer(
    folder: Path, kind: str | None = None, identifier: str | None = None
) -> Tokenizer:
    """Load whichever tokenizer ``folder`` holds (char-level or Hugging Face).

    Raises:
        CheckpointError: If the folder holds no tokenizer.
    """
    if (folder / CHAR_VOCAB_FILE).is_file():
        return CharTokenizer.load(folder)
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        return HFTokenizer(folder, kind or "native", identifier)
    raise CheckpointError(
        f"No tokenizer files in {folder}.",
        "The checkpoint or model folder is incomplete; re-create it or use another one.",
    )
