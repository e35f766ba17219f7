"""Tokens/s of llmforge's trainer vs a bare PyTorch loop over the same model, side by side.

    python benchmarks/bench_train.py [--rounds 6] [--steps 5] [--precision fp32|bf16]

Both candidates train identical copies of the custom Transformer at the default config
(configs/custom-transformer.yaml) on the built-in corpus, with the same micro-batch,
sequence length, optimizer (AdamW, foreach) and gradient clipping. They run in alternating
rounds in one process so machine noise hits both alike; the script prints each one's median
seconds per step, tokens/s, and the ratio (target: trainer / bare >= 0.97).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from llmforge.config import load_config
from llmforge.training.run import prepare_run
from llmforge.workspace import resolve_workspace

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "custom-transformer.yaml"


class StepTimer:
    """Trainer callback: wall time between consecutive steps."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.times: list[float] = []

    def on_step(self, metrics: dict) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def bare_loop(model, batches, steps, cfg, opt) -> list[float]:
    """What a user writes by hand: forward, backward, clip, step."""
    times = []
    for i in range(steps):
        t = time.perf_counter()
        x, y = batches(i)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            _, loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5, help="steps per round per candidate")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()

    overrides = {
        "precision": args.precision,
        "max_steps": 100_000,
        "log_interval": 1,
        "eval_interval": 100_000,
        "save_interval": 100_000,
        "sample_interval": 0,
        "keep_last": 1,
        "run_name": "bench",
    }
    cfg = load_config(CONFIG, overrides)
    with tempfile.TemporaryDirectory() as home:
        timer = StepTimer()
        run = prepare_run(resolve_workspace(home), cfg, callbacks=[timer])
        trainer = run.trainer
        model = copy.deepcopy(trainer.adapter.model).train()
        opt = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.learning_rate,
            betas=(cfg.beta1, cfg.beta2),
            weight_decay=cfg.weight_decay,
            foreach=True,
        )
        sampler = trainer.train_sampler
        tokens = cfg.batch_size * cfg.block_size
        ours, bare = [], []
        done = 0
        for r in range(args.rounds):
            timer.last = None
            trainer.fit(stop_at=done + args.steps)
            done += args.steps
            bare += bare_loop(
                model, lambda i, r=r: sampler.batch(10_000 + r * 100 + i, 0), args.steps, cfg, opt
            )
            ours += timer.times
            timer.times = []
        # The first round warms caches and allocators for both: drop it.
        ours, bare = ours[args.steps - 1 :], bare[args.steps :]
    t_ours, t_bare = statistics.median(ours), statistics.median(bare)
    print(
        f"custom Transformer, default config, {args.precision}, {torch.get_num_threads()} threads,"
        f" {tokens} tokens/step"
    )
    print(f"  llmforge trainer: {t_ours:.3f} s/step  {tokens / t_ours:,.0f} tok/s  (n={len(ours)})")
    print(f"  bare loop:        {t_bare:.3f} s/step  {tokens / t_bare:,.0f} tok/s  (n={len(bare)})")
    print(f"  ratio trainer/bare: {t_bare / t_ours:.3f}  (target >= 0.97)")


if __name__ == "__main__":
    main()
