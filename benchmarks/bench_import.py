"""``llmforge models import`` vs a bare ``huggingface_hub.snapshot_download``, side by side.

    python benchmarks/bench_import.py [--mb 300] [--runs 5]

Builds a random Qwen2 repository of about ``--mb`` megabytes (safetensors weights, a real
tokenizer, config, README with a license) in a temp folder, serves it from the local hub of
the tests (``tests/hubserver.py``, 127.0.0.1), and alternately runs, each in a fresh process
with an empty cache: ``llmforge models import REPO`` (download, verify every checksum,
register) and ``python -c "snapshot_download(REPO)"`` (download only). Prints the median
wall times and the ratio (target: llmforge at most 1.5x).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import LocalHub  # noqa: E402
from tiny_models import README, build_tokenizer  # noqa: E402


def build_repo(out: Path, mb: int) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True)
    vocab = build_tokenizer(out)
    # Parameters ~ 12 * layers * hidden^2 (intermediate 4x): pick the layers for the size.
    hidden = 512
    layers = max(1, round(mb * 2**20 / 4 / (12 * hidden * hidden)))
    cfg = Qwen2Config(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=vocab,
        tie_word_embeddings=True,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(README, encoding="utf-8")
    return sum(p.stat().st_size for p in out.iterdir())


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=cwd)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=300, help="approximate repository size")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per candidate")
    args = ap.parse_args()
    repo_id = "bench/qwen-random"
    with tempfile.TemporaryDirectory() as tmp, LocalHub() as hub:
        size = build_repo(Path(tmp) / "repo", args.mb)
        hub.add_repo(repo_id, Path(tmp) / "repo")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LLMFORGE_", "HF_"))}
        base |= {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
        ours, bare = [], []
        for i in range(args.runs + 1):  # the first round warms the page cache; dropped
            ws = Path(tmp) / f"ws{i}"
            ws.mkdir()
            env = base | {"HF_HOME": str(ws / "hf-home")}
            t_ours = timed(
                [
                    sys.executable,
                    "-m",
                    "llmforge",
                    "--home",
                    str(ws),
                    "models",
                    "import",
                    repo_id,
                    "--name",
                    "m",
                    "--accept-license",
                ],
                env,
                tmp,
            )
            env = base | {"HF_HOME": str(Path(tmp) / f"bare{i}")}
            code = f"from huggingface_hub import snapshot_download; snapshot_download({repo_id!r})"
            t_bare = timed([sys.executable, "-c", code], env, tmp)
            if i:
                ours.append(t_ours)
                bare.append(t_bare)
            subprocess.run(["rm", "-rf", str(ws), str(Path(tmp) / f"bare{i}")], check=True)
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"repository of {size / 1e6:.0f} MB on the local hub, {args.runs} runs each")
    print(f"  llmforge models import:  {o:.2f} s (median)")
    print(f"  snapshot_download:       {b:.2f} s (median)")
    print(f"  ratio llmforge/bare: {o / b:.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
