"""Disk full while saving, NaN/inf losses and overflowing gradients: clear errors, the last
good checkpoint kept, no non-finite update ever reaches the weights."""

from __future__ import annotations

import json
import math
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import snapshot
from llmforge.checkpoints.layout import list_checkpoints
from llmforge.checkpoints.loading import load_checkpoint_adapter
from llmforge.config import load_config
from llmforge.errors import TrainingError
from llmforge.training.run_setup import prepare_run
from llmforge.training.trainer import Trainer
from llmforge.workspace import Workspace
from train_helpers import run_cli, small_corpus, write_config


def _limit_file_size(limit: int):
    def apply() -> None:  # runs in the child before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    cfg = write_config(tmp_path / "full.yaml", data_path=str(small_corpus(tmp_path / "c.txt")))
    assert run_cli(home, "train", str(cfg), "--stop-at", "4").exit_code == 0
    run_dir = home / "runs" / "full"
    ck4 = list_checkpoints(run_dir)[-1]
    before = snapshot(ck4)

    # Resume under a file-size limit smaller than the weights file: the next save fails.
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmforge",
            "--home",
            str(home),
            "train",
            str(cfg),
            "--resume",
            "latest",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size(16_000),
    )
    assert res.returncode == 1, res.stderr
    assert "Could not write the checkpoint of step 8" in res.stderr
    assert "File too large" in res.stderr and "step-000004 is intact" in res.stderr
    assert "--resume latest" in res.stderr and "Traceback" not in res.stderr
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000004"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert snapshot(ck4) == before
    load_checkpoint_adapter(ck4)
    # With room again, the run continues from step 4 and completes.
    res = run_cli(home, "train", str(cfg), "--resume", "latest")
    assert res.exit_code == 0, res.output
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000004", "step-000008"]


def _diverging_run(tmp_path: Path, name: str, **settings: object):
    """Train RUN ``name`` at a learning rate of 500 without clipping: the loss becomes NaN/inf."""
    home = tmp_path / "ws"
    home.mkdir()
    cfg = write_config(
        tmp_path / f"{name}.yaml",
        data_path=str(small_corpus(tmp_path / "c.txt")),
        max_steps=40,
        save_interval=2,
        learning_rate=500.0,
        min_lr=0.0,
        grad_clip=0.0,
        warmup_steps=0,
        sample_interval=0,
        **settings,
    )
    return home, run_cli(home, "train", str(cfg))


def test_nan_loss_stops_with_the_last_good_checkpoint_kept(tmp_path: Path) -> None:
    home, res = _diverging_run(tmp_path, "nan")
    assert res.exit_code == 1, res.output
    assert "The training loss became nan" in res.stderr or "became inf" in res.stderr
    assert "nonfinite_loss: skip" in res.stderr and "Lower learning_rate" in res.stderr
    ckpts = list_checkpoints(home / "runs" / "nan")
    assert ckpts, "no checkpoint before the loss diverged"
    load_checkpoint_adapter(ckpts[-1])


def test_nan_loss_can_skip_steps_until_too_many_in_a_row(tmp_path: Path) -> None:
    home, res = _diverging_run(tmp_path, "skip", nonfinite_loss="skip", max_consecutive_skips=3)
    assert res.exit_code == 1, res.output
    assert "for 4 steps in a row" in res.stderr
    metrics = (home / "runs" / "skip" / "metrics.jsonl").read_text()
    assert "NaN" in metrics  # the skipped steps are logged, not hidden


def _overflowing_run(tmp_path: Path, mode: str) -> tuple[Trainer, dict[str, torch.Tensor]]:
    """A run whose weights give a finite loss (~1e19) but an infinite gradient norm.

    The final LayerNorm's gain is scaled to 1e20: the logits stay finite (so does the loss),
    while the LM-head gradient (hidden states x softmax error) is ~1e20 and its square
    overflows float32, so the gradient norm is inf. With grad_clip 0 the clip factor is then
    NaN, and an update would write NaN into every weight.
    """
    home = tmp_path / "ws"
    home.mkdir()
    cfg = write_config(
        tmp_path / "overflow.yaml",
        data_path=str(small_corpus(tmp_path / "c.txt")),
        nonfinite_loss=mode,
        max_consecutive_skips=3,
        grad_clip=0.0,
        max_steps=6,
        save_interval=2,
        sample_interval=0,
    )
    trainer = prepare_run(Workspace(home.resolve()), load_config(cfg)).trainer
    with torch.no_grad():
        trainer.adapter.model.ln_f.weight.mul_(1e20)
    start = {k: v.clone() for k, v in trainer.adapter.model.state_dict().items()}
    return trainer, start


def test_skip_mode_skips_a_finite_loss_with_an_infinite_gradient_norm(tmp_path: Path) -> None:
    trainer, start = _overflowing_run(tmp_path, "skip")
    with pytest.raises(TrainingError, match="gradient norm was inf for 4 steps in a row"):
        trainer.fit()
    # Every step was skipped: the weights are the starting ones, in memory and in the
    # checkpoint written after step 2.
    now = trainer.adapter.model.state_dict()
    assert all(torch.equal(now[k], start[k]) for k in start)
    saved = load_file(trainer.run_dir / "checkpoints" / "step-000002" / "model.safetensors")
    assert all(torch.equal(saved[k], start[k]) for k in saved)
    rows = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]  # the 4th in a row stopped the run
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] == math.inf for r in train)


def test_stop_mode_stops_at_an_infinite_gradient_norm(tmp_path: Path) -> None:
    trainer, start = _overflowing_run(tmp_path, "stop")
    with pytest.raises(TrainingError, match="gradient norm became inf at step 1"):
        trainer.fit()
    now = trainer.adapter.model.state_dict()
    assert all(torch.equal(now[k], start[k]) for k in start)
    assert list_checkpoints(trainer.run_dir) == []
