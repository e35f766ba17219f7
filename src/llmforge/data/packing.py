"""Packing: the examples of a micro-batch laid out several to a row instead of one per row.

A :class:`PackedExampleSampler` draws exactly the examples the padded
:class:`~llmforge.data.samplers.ExampleSampler` draws for (seed, step, micro-batch), so a
packed run trains on the same examples, step for step, and its loss is the padded run's
(to float rounding): packing changes only how the examples are laid out, never which ones a
step sees. The examples are placed first-fit-decreasing into rows of at most ``block_size``
positions; the rows are right-padded to the fullest one.

What keeps it exact is the third tensor, ``position_ids``: positions restart at 0 with every
example, and the model path turns each restart into a boundary that attention does not cross
(transformers >= 4.53 builds a block-diagonal causal mask from such position ids for
eager / SDPA attention, and flash attention runs them as variable-length sequences). A row's
padding continues the positions of the row's last example, so a row holding one example is
laid out exactly as in the padded path; padding has label -100 and no real token attends to
it (it comes after them), so it changes nothing.
"""

from __future__ import annotations

import torch

from llmforge.data.samplers import Example, ExampleSampler


def first_fit_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group items into rows holding at most ``capacity`` positions each.

    First-fit decreasing: the longest item first, each into the first row with room. Ties
    keep their order, so the grouping is a pure function of ``lengths``.

    Args:
        lengths: Positions of each item (each at most ``capacity``).
        capacity: Positions per row.

    Returns:
        Rows of indices into ``lengths``, longest first within a row.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def pack_examples(
    examples: list[Example], capacity: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay ``examples`` out several to a row: ``(inputs, labels, position_ids)``, (R, W) each.

    R is the number of rows :func:`first_fit_rows` makes, W the longest row's length.
    Positions restart at 0 with each example; a row's padding (``pad_id``, label -100)
    continues its last example's positions.
    """
    groups = first_fit_rows([len(e.input_ids) for e in examples], capacity)
    width = max(sum(len(examples[i].input_ids) for i in g) for g in groups)
    x = torch.full((len(groups), width), pad_id, dtype=torch.long)  # (R, W)
    y = torch.full((len(groups), width), -100, dtype=torch.long)  # (R, W)
    pos = torch.empty((len(groups), width), dtype=torch.long)  # (R, W)
    span = torch.arange(width)
    for r, g in enumerate(groups):
        at = 0
        for i in g:
            e, n = examples[i], len(examples[i].input_ids)
            x[r, at : at + n] = e.input_ids
            y[r, at : at + n] = e.labels
            pos[r, at : at + n] = span[:n]
            start, at = at, at + n
        pos[r, at:] = span[at - start : width - start]  # the padding: one more "example" tail
    return x, y, pos


class PackedExampleSampler(ExampleSampler):
    """The padded sampler's examples, packed: training batches are ``(x, y, position_ids)``.

    ``batch(step, micro)`` draws the same example indices as
    :meth:`ExampleSampler.batch` and packs them (:func:`pack_examples`); evaluation batches
    stay padded (:meth:`ExampleSampler.eval_batch`), so validation losses are computed
    exactly as without packing and as ``llmforge eval`` computes them.

    Args:
        examples: The examples.
        block_size: The most positions an example, and a packed row, has (T).
        batch_size: Examples per micro-batch (B); a packed micro-batch has at most B rows.
        seed: The run's seed.
        pad_id: Input id of padding positions.
    """

    kind = "packed-example"

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        """The examples of micro-batch ``micro`` of step ``step``, packed:
        ``(inputs, labels, position_ids)``, (R, W) each with R <= B and W <= T."""
        rows = [self.examples[i] for i in self.draw(step, micro)]
        return pack_examples(rows, self.block_size, self.pad_id)
