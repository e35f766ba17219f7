"""Start-up time of the CLI: ``llmforge --help`` and ``llmforge models list``.

Runs each command ~10 times in a fresh process and prints the medians next to the
interpreter's own start-up (``python -c pass``); the difference is llmforge's overhead,
which the Foundation issue wants well under half a second.

    python benchmarks/bench_cli.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _median_seconds(cmd: list[str], runs: int, cwd: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")}
    times = []
    for _ in range(runs + 1):  # the first run warms the file cache and is dropped
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=cwd, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command (default 10)")
    args = parser.parse_args()

    script = Path(sys.executable).with_name("llmforge")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "llmforge"]
    with tempfile.TemporaryDirectory() as ws:  # an empty workspace
        baseline = _median_seconds([sys.executable, "-c", "pass"], args.runs, ws)
        results = {
            "python -c pass": baseline,
            "llmforge --help": _median_seconds([*launcher, "--help"], args.runs, ws),
            "llmforge models list": _median_seconds([*launcher, "models", "list"], args.runs, ws),
        }
    print(f"median of {args.runs} runs ({' '.join(launcher)}):")
    for name, t in results.items():
        overhead = (
            "" if name == "python -c pass" else f"   overhead {(t - baseline) * 1000:6.0f} ms"
        )
        print(f"  {name:22s} {t * 1000:7.0f} ms{overhead}")


if __name__ == "__main__":
    main()
