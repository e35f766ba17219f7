"""Helpers of the packing tests: mixed-length examples, a tiny adapter, losses and gradients."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from llmforge.adapters.hf_causal import HFCausalLMAdapter
from llmforge.data.samplers import Example
from llmforge.modeling.tokenizers import HFTokenizer


def mixed_examples(n: int, vocab: int, block: int, seed: int = 0) -> list[Example]:
    """``n`` examples of 2..``block`` positions (mostly short, a few long), a prompt each.

    The first ~third of each example's positions are prompt (label -100), the rest trained.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        long = i % 5 == 0
        low, high = (block // 2, block) if long else (2, max(2, block // 4))
        length = int(torch.randint(low, high + 1, (1,), generator=g))
        ids = torch.randint(1, vocab, (length + 1,), generator=g)
        labels = ids[1:].clone()
        labels[: length // 3] = -100  # the prompt's positions carry no loss
        out.append(Example(ids[:-1], labels))
    return out


def tiny_adapter(folder: Path, architecture: str, attention: str) -> HFCausalLMAdapter:
    """The tiny model in ``folder`` through llmforge's adapter, fp32, with ``attention``."""
    from llmforge.adapters import get_adapter

    cls = get_adapter(architecture)
    adapter = cls.load(folder, HFTokenizer(folder, "native", "tiny"))
    adapter.model.set_attn_implementation(attention)
    return adapter


def loss_and_grads(
    adapter: HFCausalLMAdapter, batch: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of ``batch`` (``(x, y)`` or ``(x, y, position_ids)``) and the
    gradient of every trainable parameter, through the trainer's own LossModule."""
    from llmforge.training.parallel import LossModule

    module = LossModule(adapter)
    adapter.model.train()
    adapter.model.zero_grad(set_to_none=True)
    loss = module(*batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in adapter.trainable_parameters()}
    return loss.detach(), grads


def strip_padding(ids: list[int], labels: list[int], pad: int) -> tuple[tuple, tuple]:
    """``(ids, labels)`` without trailing padding (``pad`` with label -100)."""
    n = len(ids)
    while n and ids[n - 1] == pad and labels[n - 1] == -100:
        n -= 1
    return tuple(ids[:n]), tuple(labels[:n])


def segments(x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, pad: int) -> list[tuple]:
    """The examples a packed batch holds: ``(ids, labels)`` of each run of positions from 0,
    the row's padding left out."""
    out = []
    for r in range(x.size(0)):
        starts = [*(pos[r] == 0).nonzero().flatten().tolist(), x.size(1)]
        for a, b in itertools.pairwise(starts):
            out.append(strip_padding(x[r, a:b].tolist(), y[r, a:b].tolist(), pad))
    return out
