"""The machine's own matmul peak, fp32 and bf16 (GFLOP/s), to read the other numbers against.

    python benchmarks/matmul_peak.py [--n 2048] [--runs 10]

Alternates fp32 and bf16 (n x n) @ (n x n) products and prints the best and median rates.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    n = args.n
    mats = {
        dt: (torch.randn(n, n).to(dt), torch.randn(n, n).to(dt))
        for dt in (torch.float32, torch.bfloat16)
    }
    rates: dict[torch.dtype, list[float]] = {dt: [] for dt in mats}
    for i in range(args.runs + 1):
        for dt, (a, b) in mats.items():
            t = time.perf_counter()
            a @ b
            if i:  # the first round warms up
                rates[dt].append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    print(f"matmul {n}x{n}, {torch.get_num_threads()} threads, {args.runs} runs each")
    for dt, r in rates.items():
        name = str(dt).removeprefix("torch.")
        med = statistics.median(r)
        print(f"  {name:9s} best {max(r):7.1f} GFLOP/s, median {med:7.1f}")


if __name__ == "__main__":
    main()
