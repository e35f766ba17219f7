"""Training text: the built-in corpus, reading a text file, and the train/validation split
of a token stream.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from llmforge.errors import DataError
from llmforge.untrusted import unicode_problem

# Standard-library modules whose source is the built-in corpus: real, varied English-and-code
# text present on every Python installation, no download. Only names present in every
# supported Python version are listed; any that a build lacks are skipped.
BUILTIN_MODULES = (
    "argparse.py",
    "textwrap.py",
    "difflib.py",
    "heapq.py",
    "bisect.py",
    "functools.py",
    "string.py",
    "fractions.py",
    "statistics.py",
    "shlex.py",
    "calendar.py",
    "pprint.py",
    "dataclasses.py",
    "enum.py",
    "configparser.py",
    "csv.py",
    "random.py",
    "locale.py",
    "json/decoder.py",
    "json/encoder.py",
    "ftplib.py",
    "smtplib.py",
    "tarfile.py",
    "zipfile/__init__.py",
)
MIN_CORPUS_CHARS = 100_000


@dataclass(frozen=True)
class Corpus:
    """Text to train on.

    Attributes:
        text: The whole text.
        source: Where it came from (a path, or ``builtin:python-stdlib``).
        sha256: Fingerprint of the text, recorded in checkpoints.
    """

    text: str
    source: str
    sha256: str


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def builtin_corpus() -> Corpus:
    """The source of a fixed list of standard-library modules, concatenated (~1 MB).

    Raises:
        DataError: If the standard library's sources are not installed.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in BUILTIN_MODULES:
        path = stdlib / name
        if path.is_file():
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    text = "\n".join(parts)
    if len(text) < MIN_CORPUS_CHARS:
        raise DataError(
            f"The built-in corpus needs the Python standard library's .py sources under "
            f"{stdlib}, and only {len(text)} characters were found.",
            "Set data_path in the config to a UTF-8 text file of your own.",
        )
    return Corpus(text, "builtin:python-stdlib", _fingerprint(text))


def check_path_text(path: Path) -> None:
    """Refuse a data path that is not valid Unicode text (it is recorded in checkpoints).

    Raises:
        DataError: If the path holds a byte that is not UTF-8 (or a lone surrogate).
    """
    problem = unicode_problem(str(path))
    if problem is not None:
        raise DataError(
            f"The data path {path} is not valid UTF-8 text: it holds {problem}. Every "
            "checkpoint records the data path, and a checkpoint cannot store that name.",
            "Rename the file (or its folder) to a UTF-8 name, or point data_path at another file.",
        )


def read_corpus(path: str | None) -> Corpus:
    """Read the training text: ``path`` (UTF-8) or, when None, the built-in corpus.

    Raises:
        DataError: If the file is missing, a directory, empty, or not UTF-8 text.
    """
    if path is None:
        return builtin_corpus()
    p = Path(path).expanduser()
    hint = "Point data_path at a UTF-8 text file (or remove it to use the built-in corpus)."
    check_path_text(p)
    if not p.exists():
        raise DataError(f"The data file {p} does not exist.", hint)
    if not p.is_file():
        raise DataError(f"data_path {p} is not a file.", hint)
    raw = p.read_bytes()
    if b"\x00" in raw[:65536]:
        raise DataError(f"The data file {p} looks binary (it contains NUL bytes).", hint)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"The data file {p} is not valid UTF-8 (byte {e.start}: {e.reason}).", hint
        ) from e
    if not text.strip():
        raise DataError(f"The data file {p} is empty.", hint)
    return Corpus(text, str(p), _fingerprint(text))


@dataclass(frozen=True)
class TokenSplit:
    """Token ids of the training and validation parts (1-D int64 tensors)."""

    train: torch.Tensor
    val: torch.Tensor


def split_tokens(ids: list[int], val_fraction: float, block_size: int) -> TokenSplit:
    """Split ids: the first ``1 - val_fraction`` trains, the tail validates.

    Raises:
        DataError: If either part is shorter than one window of ``block_size + 1`` tokens.
    """
    data = torch.tensor(ids, dtype=torch.long)
    n_val = int(len(data) * val_fraction)
    train, val = data[: len(data) - n_val], data[len(data) - n_val :]
    need = block_size + 1
    if len(train) < need or len(val) < need:
        raise DataError(
            f"The data has {len(data)} tokens: {len(train)} for training and {len(val)} for "
            f"validation, but each part needs at least block_size + 1 = {need}.",
            "Use more text, a smaller block_size, or a different val_fraction.",
        )
    return TokenSplit(train, val)
