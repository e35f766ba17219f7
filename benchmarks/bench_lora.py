"""LoRA vs full fine-tuning of a Qwen2-shaped model: tokens/s and peak RSS.

    python benchmarks/bench_lora.py                           # 'small' Qwen2 shape, seq 256
    python benchmarks/bench_lora.py --shape 0.5b --seq 512 --precision bf16 --rounds 2 --steps 3

Each candidate runs llmforge's own trainer (the same ``Trainer``, optimizer and batches a
``llmforge train`` run uses; ``finetune: lora`` with the default LoRA settings for Qwen: r=8,
alpha=16, dropout 0.05 on the attention and MLP projections) in its own subprocess, so each
one's peak RSS (``VmHWM``) is its own. Timing rounds alternate the two candidates (and their
order) so machine noise hits both alike; the report gives median seconds per step over all
measured steps, tokens/s, the LoRA/full ratios and each candidate's median peak RSS.
Targets: LoRA tokens/s >= 1.3x full, LoRA peak RSS <= 50% of full.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _qwen_shapes import QWEN_SHAPES, qwen_model


class Done(Exception):
    """Raised by the callback to end the measured steps without a final checkpoint."""


class Timer:
    """Trainer callback: the wall time of every optimizer step."""

    def __init__(self, steps: int) -> None:
        self.steps, self.times = steps, []
        self.mark = time.perf_counter()

    def on_step(self, metrics: dict) -> None:
        now = time.perf_counter()
        self.times.append(now - self.mark)
        self.mark = now
        if len(self.times) >= self.steps:
            raise Done


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args: argparse.Namespace) -> None:
    """One candidate: build the model, train ``warmup + steps`` steps, print JSON."""
    import torch

    from llmforge.adapters import peft_lora
    from llmforge.adapters.qwen import Qwen2Adapter
    from llmforge.config import TrainingConfig
    from llmforge.data.samplers import WindowSampler
    from llmforge.device import resolve_device
    from llmforge.modeling.tokenizers import CharTokenizer
    from llmforge.training.distributed import DistContext
    from llmforge.training.optim import build_optimizer
    from llmforge.training.trainer import Trainer

    cfg = TrainingConfig(
        model_name="bench",
        finetune=args.worker,
        block_size=args.seq,
        batch_size=args.batch,
        precision=args.precision,
        device=args.device,
        max_steps=100_000,
        warmup_steps=0,
        learning_rate=1e-4,
        min_lr=1e-5,
        weight_decay=0.0,
        log_interval=1,
        eval_interval=100_000,
        save_interval=100_000,
        sample_interval=0,
    )
    vocab = QWEN_SHAPES[args.shape][5]
    adapter = Qwen2Adapter(qwen_model(args.shape), CharTokenizer(["a"]))  # random-id batches
    device = resolve_device(args.device)
    adapter.model.to(device)
    if cfg.finetune == "lora":
        peft_lora.attach(adapter, peft_lora.resolve_settings("qwen2", cfg.lora))
    data = torch.randint(0, vocab, (200_000,))
    sampler = WindowSampler(data, cfg.block_size, cfg.batch_size, cfg.seed)
    timer = Timer(args.warmup + args.steps)
    with tempfile.TemporaryDirectory() as home:
        trainer = Trainer(
            cfg,
            adapter,
            build_optimizer(adapter, cfg),
            sampler,
            sampler,
            Path(home) / "runs" / "bench",
            {},
            callbacks=[timer],
            dist=DistContext(device=device),
        )
        with contextlib.suppress(Done):
            trainer.fit()
    print(
        json.dumps(
            {
                "times": timer.times[args.warmup :],
                "peak_rss": peak_rss_bytes(),
                "parameters": adapter.num_parameters(),
                "trainable": adapter.num_parameters(trainable_only=True),
                "threads": torch.get_num_threads(),
            }
        )
    )


def run_candidate(name: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        *("--shape", args.shape, "--seq", str(args.seq), "--batch", str(args.batch)),
        *("--precision", args.precision, "--steps", str(args.steps)),
        *("--warmup", str(args.warmup), "--device", args.device),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(QWEN_SHAPES), default="small")
    ap.add_argument("--seq", type=int, default=256, help="sequence length")
    ap.add_argument("--batch", type=int, default=1, help="micro-batch")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per process")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured first steps")
    ap.add_argument("--rounds", type=int, default=3, help="processes per candidate")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--worker", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    results: dict[str, list[dict]] = {"full": [], "lora": []}
    for i in range(args.rounds):
        for name in ("full", "lora") if i % 2 == 0 else ("lora", "full"):
            results[name].append(run_candidate(name, args))
            print(f"  round {i + 1}: {name} done", file=sys.stderr)
    tokens = args.batch * args.seq
    summary = {}
    for name, runs in results.items():
        step = statistics.median([t for r in runs for t in r["times"]])
        summary[name] = {
            "s_per_step": step,
            "tokens_per_s": tokens / step,
            "peak_rss": statistics.median(r["peak_rss"] for r in runs),
            "parameters": runs[0]["parameters"],
            "trainable": runs[0]["trainable"],
        }
    full, lo = summary["full"], summary["lora"]
    print(
        f"Qwen2 shape {args.shape!r}: {full['parameters'] / 1e6:.1f}M parameters "
        f"(LoRA trains {lo['trainable'] / 1e6:.2f}M), {args.precision}, seq {args.seq}, "
        f"batch {args.batch}, {results['full'][0]['threads']} threads, {args.rounds} rounds x "
        f"{args.steps} steps per candidate"
    )
    for name, s in summary.items():
        print(
            f"  {name:4}: {s['s_per_step']:.3f} s/step  {s['tokens_per_s']:,.0f} tok/s  "
            f"peak RSS {s['peak_rss'] / 2**30:.2f} GiB"
        )
    speed = lo["tokens_per_s"] / full["tokens_per_s"]
    rss = lo["peak_rss"] / full["peak_rss"]
    print(f"  LoRA/full tokens/s: {speed:.2f}x (target >= 1.3x)")
    print(f"  LoRA/full peak RSS: {rss:.0%} (target <= 50%)")


if __name__ == "__main__":
    main()
