"""Scaling of ``llmforge train`` over processes: 1 vs N, DDP and FSDP, same global batch.

    python benchmarks/bench_scaling.py                  # custom Transformer, 2 processes
    python benchmarks/bench_scaling.py --nproc 2 --steps 40 --set d_model=384

Every candidate is the real command (``llmforge train CONFIG [--nproc N]``) in a fresh
workspace, at the same global batch: one process accumulates N micro-batches where N
processes take one each. Throughput is the median of the per-step tokens/s that rank 0 logs
(``metrics.jsonl``), after ``--warmup`` steps. Candidates run in alternating order for
``--rounds`` rounds.

- ``1 proc, all threads``: what one process gets out of the machine (torch's default threads);
- ``1 proc, T threads``: one process with a per-process share of the cores (T = cores / N);
- ``N proc ddp`` and ``N proc fsdp``: N processes, each with T threads.

Scaling efficiency = tokens/s of N processes / (N x tokens/s of one process with T threads),
the usual definition (each process gets the same resources); the ratio to ``1 proc, all
threads`` is what switching to N processes buys on this machine. On a CPU machine the cores
are the limit: N processes share them, so expect that ratio near or below 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(config: Path, nproc: int, threads: int, strategy: str, sets: list[str]) -> list[dict]:
    """One ``llmforge train`` in a fresh workspace; the rows of its metrics.jsonl."""
    with tempfile.TemporaryDirectory() as home:
        cmd = [sys.executable, "-m", "llmforge", "--home", home, "train", str(config)]
        cmd += ["--run-name", "bench", "--set", f"threads={threads}"]
        cmd += ["--set", f"strategy={strategy}"]
        for s in sets:
            cmd += ["--set", s]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"failed: {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        metrics = Path(home) / "runs" / "bench" / "metrics.jsonl"
        return [json.loads(line) for line in metrics.open()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "custom-transformer.yaml")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config key=value")
    args = ap.parse_args()

    base = yaml.safe_load(args.config.read_text()) or {}
    accum = int(base.get("grad_accum_steps", 1))
    n, cores = args.nproc, os.cpu_count() or 1
    per = max(1, cores // n)
    common = [
        f"max_steps={args.steps}",
        "warmup_steps=2",
        "log_interval=1",
        "eval_interval=100000",
        "sample_interval=0",
        f"save_interval={args.steps}",
        *args.sets,
    ]
    candidates = {
        "1 proc, all threads": (1, 0, "ddp", [f"grad_accum_steps={accum * n}"]),
        f"1 proc, {per} thread(s)": (1, per, "ddp", [f"grad_accum_steps={accum * n}"]),
        f"{n} proc ddp, {per} thread(s) each": (n, per, "ddp", []),
        f"{n} proc fsdp, {per} thread(s) each": (n, per, "fsdp", []),
    }
    speeds: dict[str, list[float]] = {k: [] for k in candidates}
    losses: dict[str, float] = {}
    for i in range(args.rounds):
        order = list(candidates) if i % 2 == 0 else list(reversed(candidates))
        for name in order:
            nproc, threads, strategy, extra = candidates[name]
            rows = run(args.config, nproc, threads, strategy, common + extra)
            steps = [r for r in rows if r["kind"] == "train" and r["step"] > args.warmup]
            speeds[name] += [r["tokens_per_s"] for r in steps]
            losses[name] = steps[-1]["loss"]
            print(f"  round {i + 1}: {name} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    one_all, one_per = med["1 proc, all threads"], med[f"1 proc, {per} thread(s)"]
    print(
        f"{args.config.name} {' '.join(args.sets)}: {cores} cores, global batch = "
        f"{accum * n} micro-batches per step, {args.rounds} rounds x "
        f"{args.steps - args.warmup} measured steps"
    )
    for name, tps in med.items():
        print(f"  {name:32} {tps:10,.0f} tok/s   loss after {args.steps} steps {losses[name]:.4f}")
    for name in list(candidates)[2:]:
        eff = med[name] / (n * one_per)
        print(
            f"  {name}: scaling efficiency {eff:.0%} (vs {n} x 1 proc with {per} thread(s)); "
            f"{med[name] / one_all:.2f}x one process with all threads"
        )


if __name__ == "__main__":
    main()
