"""Loss parity: the fast defaults (bf16 weights + fp32 masters, fused loss, fused AdamW) vs fp32.

    python benchmarks/bench_parity.py                        # Qwen2 'small' shape, 40 steps
    python benchmarks/bench_parity.py --shape tiny --steps 60

Trains the same Qwen2-shaped model (random init, same seed) with llmforge's trainer twice on
the same batches of real text (the built-in corpus, one token per byte, so the loss actually
falls): once in plain fp32 (foreach AdamW, unfused loss) and once with the fast bf16
defaults. Prints both losses at a few steps and the relative difference at the end (target:
within 2%). No timing: run it on a quiet or a busy machine alike.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _qwen_shapes import QWEN_SHAPES, qwen_model

from llmforge.config import TrainingConfig
from llmforge.data.corpus import builtin_corpus
from llmforge.data.samplers import WindowSampler
from llmforge.training.optim import build_optimizer
from llmforge.training.trainer import Trainer


class Losses:
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_step(self, metrics: dict) -> None:
        self.values.append(metrics["loss"])


def train(shape: str, steps: int, seq: int, overrides: dict) -> list[float]:
    from llmforge.adapters.qwen import Qwen2Adapter
    from llmforge.modeling.tokenizers import CharTokenizer

    cfg = TrainingConfig(
        model_name="bench",
        block_size=seq,
        batch_size=4,
        max_steps=steps,
        warmup_steps=min(10, steps // 10),
        learning_rate=1e-3,
        min_lr=1e-4,
        log_interval=1,
        eval_interval=10**6,
        save_interval=10**6,
        sample_interval=0,
        **overrides,
    )
    model = qwen_model(shape).train()
    adapter = Qwen2Adapter(model, CharTokenizer(["a"]))
    text = "".join(builtin_corpus().text for _ in range(1))[:400_000]
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    sampler = WindowSampler(data, seq, cfg.batch_size, cfg.seed)
    losses = Losses()
    with tempfile.TemporaryDirectory() as home:
        trainer = Trainer(
            cfg, adapter, build_optimizer(adapter, cfg), sampler, sampler, Path(home), {}
        )
        trainer.callbacks = [losses]
        torch.manual_seed(1)
        trainer.fit(stop_at=steps - 1)  # stop before the final checkpoint/eval
    return losses.values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(QWEN_SHAPES), default="small")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    fp32 = train(
        args.shape,
        args.steps,
        args.seq,
        {
            "precision": "fp32",
            "param_dtype": "fp32",
            "fused_loss": False,
            "optimizer_impl": "foreach",
        },
    )
    fast = train(args.shape, args.steps, args.seq, {"precision": "bf16"})
    print(f"Qwen2 shape {args.shape!r}, seq {args.seq}, batch 4, built-in corpus as bytes")
    for i in sorted({0, len(fp32) // 4, len(fp32) // 2, len(fp32) - 1}):
        print(f"  step {i + 1:4d}: fp32 {fp32[i]:.4f}   fast bf16 defaults {fast[i]:.4f}")
    rel = abs(fast[-1] - fp32[-1]) / fp32[-1]
    mean = lambda v: sum(v[-5:]) / len(v[-5:])  # noqa: E731
    rel5 = abs(mean(fast) - mean(fp32)) / mean(fp32)
    print(f"  relative difference at the last step: {rel:.2%}; mean of the last 5: {rel5:.2%}")


if __name__ == "__main__":
    main()
