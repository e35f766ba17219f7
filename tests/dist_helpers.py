"""Helpers for the multi-process tests: run the real commands, read what rank 0 wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOL = 1e-5  # relative: two processes vs one sum the same numbers in another order


def llmforge(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m llmforge --home HOME ARGS`` in a subprocess."""
    cmd = [sys.executable, "-m", "llmforge", "--home", str(home), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def torchrun(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m llmforge ARGS``."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "llmforge",
        "--home",
        str(home),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def losses(home: Path, run: str) -> list[float]:
    """Training loss of every step, from metrics.jsonl (written by rank 0 only)."""
    rows = [json.loads(line) for line in (home / "runs" / run / "metrics.jsonl").open()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))  # no duplicates
    return [r["loss"] for r in steps]


def val_losses(home: Path, run: str) -> list[float]:
    """Validation loss of every evaluation, from metrics.jsonl."""
    rows = [json.loads(line) for line in (home / "runs" / run / "metrics.jsonl").open()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert evals, f"run {run} logged no validation loss"
    return [r["val_loss"] for r in evals]


def weights(path: Path) -> dict:
    """The model weights of a checkpoint, whatever its layout (sharded ones consolidated)."""
    from llmforge.checkpoints.loading import load_checkpoint_adapter

    adapter, _ = load_checkpoint_adapter(path)
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def weights_close(a: dict, b: dict, atol: float = 1e-5) -> bool:
    """Same tensors up to ``atol`` (other processes sum gradients in another order)."""
    return a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= atol for k in a)


def ckpt(home: Path, run: str, step: int) -> Path:
    return home / "runs" / run / "checkpoints" / f"step-{step:06d}"


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOL * abs(y) for x, y in zip(a, b, strict=True))
