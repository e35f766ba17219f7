"""Batches for the trainer: random token windows, or padded examples with loss masks
(packed ones: :mod:`llmforge.data.packing`).

The windows (and examples) of optimizer step ``s``, micro-batch ``m`` depend only on
``(seed, s, m)``, so the sampler's position is the step counter itself and a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import torch


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

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, ...]:
        """``(inputs, targets)`` (B, T) of micro-batch ``micro`` of optimizer step ``step``;
        a packed sampler adds ``position_ids`` (the model's ``forward`` takes them)."""
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

    Each row holds one example from position 0, padded on the right with ``pad_id`` (label
    -100) to the longest example of the batch. With a causal model a real position only
    attends to earlier positions, never to the padding after it, and its position ids are the
    ones it would have alone, so no attention mask is needed and the loss is exactly that of
    the unpadded examples. :class:`llmforge.data.packing.PackedExampleSampler` packs the same
    examples several to a row (with position resets the model turns into attention masks).

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

    def draw(self, step: int, micro: int) -> list[int]:
        """The indices of the B random examples of micro-batch ``micro`` of step ``step``."""
        g = torch.Generator().manual_seed(_seed_for(self.seed, "train", step, micro))
        return torch.randint(0, len(self.examples), (self.batch_size,), generator=g).tolist()

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random examples for micro-batch ``micro`` of step ``step``: ``(inputs, labels)``."""
        return self._collate(self.draw(step, micro))

    def eval_batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples ``i*B .. i*B+B-1`` (wrapping around): every example gets evaluated."""
        n = len(self.examples)
        return self._collate([(i * self.batch_size + j) % n for j in range(self.batch_size)])
