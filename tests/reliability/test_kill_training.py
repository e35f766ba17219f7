"""SIGKILL a training run at random moments, resume, and end where an uninterrupted run ends.

The run checkpoints every step, so many kills land while a checkpoint is being written. After
every kill: only complete checkpoints are listed, each of them loads, and `--resume latest`
(or a fresh start, when no checkpoint was written yet) continues. The final losses and weights
must equal those of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from llmforge.checkpoints.layout import list_checkpoints
from llmforge.checkpoints.loading import load_checkpoint_adapter
from train_helpers import run_cli, small_corpus, write_config

KILLS = 10
STEPS = 150
SEED = 20261122


def _train_cmd(home: Path, cfg: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "llmforge", "--home", str(home), "train", str(cfg)]
    return [*cmd, "--resume", "latest"] if resume else cmd


def _final(home: Path, run: str) -> tuple[list, dict[str, torch.Tensor]]:
    ck = home / "runs" / run / "checkpoints" / f"step-{STEPS:06d}"
    losses = json.loads((ck / "trainer_state.json").read_text())["losses"]
    return losses, load_file(ck / "model.safetensors")


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    data = small_corpus(tmp_path / "corpus.txt")
    cfg = write_config(
        tmp_path / "killed.yaml",
        data_path=str(data),
        max_steps=STEPS,
        save_interval=1,
        keep_last=2,
        grad_accum_steps=2,
        eval_interval=25,
        sample_interval=40,
        log_interval=1,
        d_model=64,
        batch_size=8,
    )
    ref_home, home = tmp_path / "ref", tmp_path / "ws"
    ref_home.mkdir()
    home.mkdir()
    assert run_cli(ref_home, "train", str(cfg)).exit_code == 0

    run_dir = home / "runs" / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = mid_write = 0
    while kills < KILLS:
        resume = bool(list_checkpoints(run_dir))
        proc = subprocess.Popen(
            _train_cmd(home, cfg, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        # Wait for the first training step, then kill at a random moment after it.
        assert proc.stdout is not None
        line = proc.stdout.readline()
        deadline = time.monotonic() + 120
        while line and not line.startswith(b"step ") and time.monotonic() < deadline:
            line = proc.stdout.readline()
        if not line:  # the run finished before we could kill it
            proc.wait(timeout=60)
            break
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills += 1
        ckdir = run_dir / "checkpoints"
        if ckdir.is_dir() and any(p.name.startswith(".tmp-") for p in ckdir.iterdir()):
            mid_write += 1
        # Whatever is listed as a checkpoint is complete and loads.
        for ck in list_checkpoints(run_dir):
            load_checkpoint_adapter(ck)
    # Finish the run without interruption.
    res = subprocess.run(
        _train_cmd(home, cfg, bool(list_checkpoints(run_dir))),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert not any(p.name.startswith(".tmp-") for p in (run_dir / "checkpoints").iterdir())

    ref_losses, ref_w = _final(ref_home, "killed")
    losses, w = _final(home, "killed")
    assert losses == ref_losses
    assert all(torch.equal(ref_w[k], w[k]) for k in ref_w)
    assert kills >= KILLS // 2, f"only {kills} kills landed"
    print(f"{kills} kills, {mid_write} during a checkpoint write")
