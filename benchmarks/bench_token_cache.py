"""Preparing chat data for a run: tokenizing (first run) vs reading the token cache (every
later run on the same rows, tokenizer and template).

Builds a tiny Qwen2 repo (real byte-level BPE tokenizer with Qwen's pre-tokenizer and the
ChatML template), writes N synthetic conversations of mixed length, and times
``build_batches`` (what ``llmforge train`` runs between reading the data and building the
model) with an empty cache, then with the cache the first build committed, alternating
``--rounds`` times (a fresh cache folder each round). Prints medians and the ratio.

    python benchmarks/bench_token_cache.py --rows 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_models

from llmforge.adapters import get_adapter
from llmforge.config import TrainingConfig
from llmforge.data.batches import build_batches, load_data
from llmforge.data.token_cache import TokenCache
from llmforge.modeling.tokenizers import HFTokenizer

WORDS = "the of and to in is that for it as with was on be by at this are from".split()  # noqa: SIM905


def _conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        turns = []
        for _ in range(rng.choice([1, 1, 2, 3])):  # long-tailed: most are one exchange
            q = " ".join(rng.choices(WORDS, k=int(rng.paretovariate(1.5) * 8)))
            a = " ".join(rng.choices(WORDS, k=int(rng.paretovariate(1.5) * 16)))
            turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        rows.append({"messages": turns})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from tiny_models import build_tiny_qwen

    tmp = Path(tempfile.mkdtemp(prefix="bench-token-cache-"))
    repo = build_tiny_qwen(tmp / "repo")
    data = tmp / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _conversations(args.rows)))
    cfg = TrainingConfig(data_path=str(data), block_size=512)
    adapter = get_adapter("qwen2").load(repo, HFTokenizer(repo))
    loaded = load_data(cfg, adapter.tokenizer)
    cold, warm = [], []
    for r in range(args.rounds):
        root = tmp / f"ws-{r}"
        cache = TokenCache(root)
        t0 = time.perf_counter()
        first = build_batches(loaded, adapter, cfg, cfg.block_size, None, cache)
        cold.append(time.perf_counter() - t0)
        cache.commit()
        t0 = time.perf_counter()
        second = build_batches(loaded, adapter, cfg, cfg.block_size, None, TokenCache(root))
        warm.append(time.perf_counter() - t0)
        assert first.meta == second.meta
    size = sum(p.stat().st_size for p in (tmp / "ws-0").rglob("*.safetensors"))
    print(f"{args.rows} conversations, load average {os.getloadavg()[0]:.1f}")
    print(f"tokenize (no cache): median {statistics.median(cold):.3f} s  {cold}")
    print(f"read the cache:      median {statistics.median(warm):.3f} s  {warm}")
    print(f"ratio {statistics.median(cold) / statistics.median(warm):.1f}x; cache {size:,} bytes")


if __name__ == "__main__":
    main()
