"""Tokens/s of the main job's model at several torch thread counts, on the machine as it is.

    python benchmarks/bench_threads.py                       # threads 1, 2 and auto, 3 rounds
    python benchmarks/bench_threads.py --settings 1,2,2s --rounds 4 --steps 40

A setting is a thread count (``0`` = llmforge's default, ``threads: 0``), optionally followed by
how OpenMP's idle threads wait between parallel regions: ``s`` = libgomp's own default (spin
300,000 times, ``GOMP_SPINCOUNT=300000``: what llmforge ran with before it chose a wait policy),
``p`` = ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once), ``cN`` = ``GOMP_SPINCOUNT=N``; without a
suffix, llmforge's default (see ``llmforge.cli.main``).

Each run is a real ``llmforge train configs/custom-transformer.yaml`` in its own process (the
model, batch and precision of the main job; no evaluation, samples or checkpoints before the
last step), ``--steps`` steps long. The settings alternate run by run (1, 2, auto, 1, 2, ...),
so a change in the machine's load hits every setting alike. Tokens/s is the median over the
steps after the first five (the first steps warm up the allocator and the kernels); the table
shows each setting's median over the rounds with the spread (min-max), and the load average
around the runs. ``0`` is llmforge's default (``threads: 0``), whatever rule it applies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "custom-transformer.yaml"


def _env(setting: str) -> tuple[int, dict[str, str]]:
    """The thread count of a setting and the environment its run gets."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    count, _, wait = setting.partition("c")
    if wait:
        env["GOMP_SPINCOUNT"] = wait
    elif count.endswith("s"):
        env["GOMP_SPINCOUNT"] = "300000"
    elif count.endswith("p"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return int(count.rstrip("sp")), env


def one_run(home: Path, setting: str, steps: int, name: str) -> tuple[float, int]:
    """Median tokens/s of one run after its warm-up steps, and the threads it used."""
    threads, env = _env(setting)
    cmd = [sys.executable, "-m", "llmforge", "--home", str(home), "train", str(CONFIG)]
    cmd += ["--max-steps", str(steps), "--run-name", name, "--set", f"threads={threads}"]
    for kv in ("log_interval=1", "eval_interval=100000", "sample_interval=0", "eval_steps=1"):
        cmd += ["--set", kv]
    cmd += ["--set", f"save_interval={steps}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    run = home / "runs" / name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    rates = [r["tokens_per_s"] for r in rows if r["kind"] == "train" and r["step"] > 5]
    used = 0
    for line in (run / "config.yaml").read_text().splitlines():
        if line.startswith("threads:"):
            used = int(line.split(":")[1])
    return statistics.median(rates), used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="1,2s,0", help="e.g. 1,2s,2p,2c2000,0 (see above)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    settings = args.settings.split(",")
    results: dict[str, list[float]] = {s: [] for s in settings}
    used: dict[str, set[int]] = {s: set() for s in settings}
    loads = [os.getloadavg()[0]]
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        for r in range(args.rounds):
            for s in settings:
                rate, n = one_run(home, s, args.steps, f"t{s}-r{r}")
                results[s].append(rate)
                used[s].add(n)
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1}, threads {s} (used {n}): {rate:,.0f} tok/s, "
                      f"load {loads[-1]:.1f}", flush=True)  # fmt: skip
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\n{args.rounds} rounds x {args.steps} steps, {cores} cores, load average "
        f"{min(loads):.1f}-{max(loads):.1f}, {time.monotonic() - start:.0f} s"
    )
    two = next((s for s in ("2s", "2") if s in results), None)
    print(f"| setting | threads used | median tok/s | min-max | vs {two or '-'} |")
    print("| --- | --- | --- | --- | --- |")
    ref = statistics.median(results[two]) if two else None
    for s in settings:
        med = statistics.median(results[s])
        vs = f"{med / ref:.2f}x" if ref else "-"
        label = s.replace("0", "auto (0)", 1) if s.startswith("0") else s
        spread = f"{min(results[s]):,.0f}-{max(results[s]):,.0f}"
        print(f"| {label} | {sorted(used[s])} | {med:,.0f} | {spread} | {vs} |")


if __name__ == "__main__":
    main()
