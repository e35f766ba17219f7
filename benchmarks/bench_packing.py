"""Real (non-padding) tokens/s of packed vs padded chat batches, measured side by side.

    python benchmarks/bench_packing.py                         # Qwen2 small shape, fp32
    python benchmarks/bench_packing.py --precision bf16 --steps 12
    python benchmarks/bench_packing.py --shape tiny --block 256 --batch 8

The data is a mixed-length chat set: conversation lengths drawn from a long-tailed
(log-normal) distribution, as real chat data has (many short exchanges, a few long ones),
capped at ``block_size``; the first ~40% of each conversation's tokens are the prompt (no
loss), as ``train_on_prompt: false`` makes them. Token ids are random: the cost of a step
depends on the lengths, not on the text.

Two identical copies of the model (same initial weights, each with its own AdamW as
``build_optimizer`` makes it, the trainer's forward through ``LossModule``, the config's
precision) train on the same micro-batches: the padded ``ExampleSampler``'s and the
``PackedExampleSampler``'s, which hold the same examples. They alternate step by step in one
process, so machine noise hits both alike. The script prints the median real tokens/s of each
(real = the examples' own positions, the same count for both), the ratio, the positions each
computes per step, and how far apart their losses are (the same examples: float rounding only).

The from-scratch Transformer (``--model custom``) is not measured: its data is plain text, read
as dense windows with no padding, and its adapter does not take packed position ids, so
packing never applies to it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from _qwen_shapes import QWEN_SHAPES, qwen_model

from llmforge.adapters.qwen import Qwen2Adapter
from llmforge.config import TrainingConfig
from llmforge.data.packing import PackedExampleSampler
from llmforge.data.samplers import Example, ExampleSampler
from llmforge.device import autocast
from llmforge.training.optim import build_optimizer
from llmforge.training.parallel import LossModule
from llmforge.training.speed import apply_speed_settings


def chat_lengths(n: int, block: int, median: float, sigma: float, seed: int) -> list[int]:
    """``n`` conversation lengths, log-normal around ``median`` tokens, in [8, ``block``]."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.exp(math.log(median) + sigma * torch.randn(n, generator=g))
    return [int(min(block, max(8, round(float(v))))) for v in raw]


def chat_examples(lengths: list[int], vocab: int, seed: int) -> list[Example]:
    """Examples of the given lengths: random ids, the first 40% of positions untrained."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(1, vocab, (n + 1,), generator=g)
        labels = ids[1:].clone()
        labels[: int(0.4 * n)] = -100
        out.append(Example(ids[:-1], labels))
    return out


def candidate(shape: str, cfg: TrainingConfig):
    """A fresh model of ``shape`` (seed 0), its adapter, LossModule and optimizer."""
    adapter = Qwen2Adapter(qwen_model(shape, seed=0), tokenizer=None)
    apply_speed_settings(cfg, adapter)
    optimizer = build_optimizer(adapter, cfg)
    adapter.model.train()
    return adapter, LossModule(adapter), optimizer


def train_step(module, optimizer, batch, bf16: bool) -> float:
    """One optimizer step on ``batch`` (padded ``(x, y)`` or packed ``(x, y, pos)``)."""
    with autocast(torch.device("cpu"), bf16):
        loss = module(*batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(QWEN_SHAPES), default="small")
    p.add_argument("--model", choices=["qwen", "custom"], default="qwen")
    p.add_argument("--block", type=int, default=512, help="block_size (longest row)")
    p.add_argument("--batch", type=int, default=8, help="batch_size: examples per micro-batch")
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--median", type=float, default=96.0, help="median conversation length")
    p.add_argument("--sigma", type=float, default=1.0, help="log-normal spread (tail)")
    p.add_argument("--steps", type=int, default=8, help="measured steps per candidate")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args()
    if args.model == "custom":
        print(
            "The from-scratch Transformer trains on plain text (dense windows, no padding) and "
            "its adapter takes no packed position ids: packing does not apply to it."
        )
        return

    vocab = QWEN_SHAPES[args.shape][5]
    lengths = chat_lengths(args.examples, args.block, args.median, args.sigma, seed=1)
    exs = chat_examples(lengths, vocab, seed=2)
    cfg = TrainingConfig.from_dict(
        {"precision": args.precision, "learning_rate": 1e-4, "batch_size": args.batch}
    )
    print(
        f"Qwen2 {args.shape} shape, {args.precision}, block {args.block}, micro-batch "
        f"{args.batch}; {len(exs)} conversations, length median {statistics.median(lengths):.0f}"
        f", mean {statistics.mean(lengths):.0f}, p90 {sorted(lengths)[int(0.9 * len(lengths))]}"
        f", max {max(lengths)}; torch threads {torch.get_num_threads()}"
    )
    samplers = {
        "padded": ExampleSampler(exs, args.block, args.batch, seed=0, pad_id=0),
        "packed": PackedExampleSampler(exs, args.block, args.batch, seed=0, pad_id=0),
    }
    models = {name: candidate(args.shape, cfg) for name in samplers}
    bf16 = cfg.precision == "bf16"
    times: dict[str, list[float]] = {n: [] for n in samplers}
    real: list[int] = []
    positions: dict[str, list[int]] = {n: [] for n in samplers}
    losses: dict[str, list[float]] = {n: [] for n in samplers}
    for step in range(args.warmup + args.steps):
        order = list(samplers) if step % 2 == 0 else list(reversed(samplers))
        for name in order:  # alternate which goes first, step by step
            batch = samplers[name].batch(step, 0)
            _, module, opt = models[name]
            t = time.perf_counter()
            losses[name].append(train_step(module, opt, batch, bf16))
            dt = time.perf_counter() - t
            if step >= args.warmup:
                times[name].append(dt)
                positions[name].append(batch[0].numel())
        if step >= args.warmup:
            real.append(sum(len(exs[i].input_ids) for i in samplers["padded"].draw(step, 0)))
    rate = {}
    for name in samplers:
        per_step = [r / t for r, t in zip(real, times[name], strict=True)]
        rate[name] = statistics.median(per_step)
        print(
            f"{name}: {rate[name]:,.0f} real tok/s (median s/step "
            f"{statistics.median(times[name]):.3f}), {statistics.mean(positions[name]):,.0f} "
            f"positions computed per step for {statistics.mean(real):,.0f} real"
        )
    gap = max(abs(a - b) / abs(b) for a, b in zip(losses["packed"], losses["padded"], strict=True))
    print(f"packed / padded: {rate['packed'] / rate['padded']:.2f}x real tokens/s")
    print(
        f"losses (same examples): largest relative gap over {len(losses['packed'])} steps "
        f"{gap:.1e}; last step packed {losses['packed'][-1]:.6f}, padded "
        f"{losses['padded'][-1]:.6f}"
    )


if __name__ == "__main__":
    main()
