"""Training text: reading it, the built-in corpus, the train/validation split, and batching.

The sampler draws random windows. The windows of optimizer step ``s``, micro-batch ``m``
depend only on ``(seed, s, m)``, so the sampler's position is the step counter itself and a
resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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


def _seed_for(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class WindowSampler:
    """Random windows of ``block_size + 1`` tokens, reproducible from (seed, step, micro).

    Args:
        data: 1-D token ids.
        block_size: Tokens per input sequence (T).
        batch_size: Sequences per micro-batch (B).
        seed: The run's seed.
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, seed: int) -> None:
        self.windows = data.unfold(0, block_size + 1, 1)  # (N - T, T + 1), a view, no copy
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed

    def _draw(self, *key: object) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(_seed_for(self.seed, *key))
        starts = torch.randint(0, self.windows.size(0), (self.batch_size,), generator=g)
        w = self.windows[starts]  # (B, T + 1)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()  # inputs, targets: (B, T) each

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch ``micro`` of optimizer step ``step``: ``(inputs, targets)``."""
        return self._draw("train", step, micro)

    def eval_batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``i``-th fixed evaluation batch (the same at every evaluation)."""
        return self._draw("eval", i)


class Sampler(Protocol):
    """What the trainer needs from a batch source."""

    block_size: int

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` (B, T) of micro-batch ``micro`` of optimizer step ``step``."""
        ...

    def eval_batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``i``-th fixed evaluation batch."""
        ...


@dataclass(frozen=True)
class Example:
    """One training example: ``input_ids`` (T,) and shifted ``labels`` (T,), -100 = no loss."""

    input_ids: torch.Tensor
    labels: torch.Tensor


def make_example(ids: list[int], trained: list[bool], block_size: int) -> Example | None:
    """Shift a token sequence into an example of at most ``block_size`` positions.

    ``trained[j]`` says whether token ``j`` is a target. Longer sequences are truncated to
    ``block_size + 1`` tokens. Returns None when no target is left.
    """
    ids, trained = ids[: block_size + 1], trained[: block_size + 1]
    if len(ids) < 2:
        return None
    x = torch.tensor(ids[:-1], dtype=torch.long)
    targets = zip(ids[1:], trained[1:], strict=True)
    y = torch.tensor([t if m else -100 for t, m in targets], dtype=torch.long)
    if bool((y == -100).all()):
        return None
    return Example(x, y)


class ExampleSampler:
    """Batches of whole examples, right-padded, reproducible from (seed, step, micro).

    Padding, not packing: each row holds one example from position 0, padded on the right
    with ``pad_id`` (label -100) to the longest example of the batch. With a causal model a
    real position only attends to earlier positions, never to the padding after it, and its
    position ids are the ones it would have alone, so no attention mask is needed and the
    loss is exactly that of the unpadded examples. Packing would be faster on short
    examples but needs per-example attention masks and position resets to stay correct.

    Args:
        examples: The examples.
        block_size: The most positions an example has (T).
        batch_size: Examples per micro-batch (B).
        seed: The run's seed.
        pad_id: Input id of padding positions.
    """

    kind = "random-example"

    def __init__(
        self, examples: list[Example], block_size: int, batch_size: int, seed: int, pad_id: int
    ) -> None:
        if not examples:
            raise ValueError("no examples")
        self.examples = examples
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id

    def _collate(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.examples[i] for i in idx]
        t = max(len(e.input_ids) for e in rows)
        x = torch.full((len(rows), t), self.pad_id, dtype=torch.long)
        y = torch.full((len(rows), t), -100, dtype=torch.long)
        for r, e in enumerate(rows):
            x[r, : len(e.input_ids)] = e.input_ids
            y[r, : len(e.labels)] = e.labels
        return x, y

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random examples for micro-batch ``micro`` of step ``step``: ``(inputs, labels)``."""
        g = torch.Generator().manual_seed(_seed_for(self.seed, "train", step, micro))
        idx = torch.randint(0, len(self.examples), (self.batch_size,), generator=g)
        return self._collate(idx.tolist())

    def eval_batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples ``i*B .. i*B+B-1`` (wrapping around): every example gets evaluated."""
        n = len(self.examples)
        return self._collate([(i * self.batch_size + j) % n for j in range(self.batch_size)])
