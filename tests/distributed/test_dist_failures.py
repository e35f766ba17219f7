"""A rank that dies or hangs stops the whole job with a clear message, and the last complete
checkpoint stays usable. Plus the device and strategy checks.

No test here asserts a timing: each checks the outcome (exit code, message, what is left), and
the timeouts below are generous hang guards only (a job that never stops fails the test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import snapshot
from llmforge.checkpoints.layout import latest_checkpoint
from train_helpers import run_cli, small_corpus, write_config

LONG = {
    "n_layers": 1,
    "dropout": 0.0,
    "max_steps": 100_000,  # never reached: the test ends the job
    "warmup_steps": 1,
    "save_interval": 10,
    "eval_interval": 100_000,
    "sample_interval": 0,
    "log_interval": 50,
}


def _rank_pids(tag: str, rank: int) -> list[int]:
    """Processes whose environment carries ``tag`` and ``RANK=rank`` (the job's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"DIST_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            found.append(int(entry.name))
    return found


def _start(home: Path, cfg: Path, run: str, *extra: str) -> tuple[subprocess.Popen, str]:
    tag = uuid.uuid4().hex
    # A stopped (hung) process only dies from the launcher's SIGKILL after this grace period.
    env = {**os.environ, "DIST_TEST_TAG": tag, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "5"}
    cmd = [sys.executable, "-m", "llmforge", "--home", str(home), "train", str(cfg)]
    proc = subprocess.Popen(
        [*cmd, "--nproc", "2", "--run-name", run, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job started from a terminal
    )
    return proc, tag


def _wait_for_checkpoint(home: Path, run: str, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ck = latest_checkpoint(home / "runs" / run)
        if ck is not None and int(ck.name.split("-")[1]) >= 20:
            return ck
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("no checkpoint was written")


@pytest.fixture
def long_cfg(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "ws"
    home.mkdir()
    data = small_corpus(tmp_path / "corpus.txt", chars=20_000)
    return home, write_config(tmp_path / "long.yaml", data_path=str(data), **LONG)


def test_a_killed_rank_ends_the_job_with_a_clear_error(long_cfg: tuple[Path, Path]) -> None:
    home, cfg = long_cfg
    proc, tag = _start(home, cfg, "kill")
    try:
        _wait_for_checkpoint(home, "kill", proc)
        victims = _rank_pids(tag, 1)
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)  # a hang guard, not a timing
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert f"Rank 1 of 2 (pid {victims[0]}) was killed by SIGKILL" in err
    assert "is intact" in err and "--resume latest --run-name kill --nproc 2" in err
    assert "Traceback" not in err and "Unexpected error" not in err
    assert not _rank_pids(tag, 0)  # nothing is left running
    # The last complete checkpoint continues (on one process here).
    last = latest_checkpoint(home / "runs" / "kill")
    step = int(last.name.split("-")[1])
    res = run_cli(
        home,
        "train",
        str(cfg),
        "--run-name",
        "kill",
        "--resume",
        "latest",
        "--max-steps",
        str(step + 2),
    )
    assert res.exit_code == 0, res.output
    assert latest_checkpoint(home / "runs" / "kill").name == f"step-{step + 2:06d}"


def test_a_hung_rank_stops_the_job_after_dist_timeout(long_cfg: tuple[Path, Path]) -> None:
    home, cfg = long_cfg
    proc, tag = _start(home, cfg, "hang", "--set", "dist_timeout=4")
    victims: list[int] = []
    try:
        _wait_for_checkpoint(home, "hang", proc)
        victims = _rank_pids(tag, 1)
        os.kill(victims[0], signal.SIGSTOP)  # alive but silent: a hang, not a crash
        _out, err = proc.communicate(timeout=180)  # a hang guard, not a timing
    finally:
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
    assert proc.returncode == 1, err
    assert "Rank 0 lost contact with the other processes" in err
    assert "dist_timeout (4 s)" in err and "is intact" in err
    assert "was killed by" not in err  # the launcher's own SIGKILL of the hung rank is no cause
    assert "Traceback" not in err and "Unexpected error" not in err


def test_ctrl_c_stops_every_rank_at_the_same_step_with_one_checkpoint(
    long_cfg: tuple[Path, Path],
) -> None:
    home, cfg = long_cfg
    proc, _tag = _start(home, cfg, "int")
    try:
        _wait_for_checkpoint(home, "int", proc)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Interrupted at step" in out and "--resume latest --run-name int --nproc 2" in out
    step = int(out.split("Interrupted at step ")[1].split()[0])
    last = latest_checkpoint(home / "runs" / "int")
    assert last.name == f"step-{step:06d}"
    assert "Traceback" not in err


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the refusal on a machine without GPU"
)
def test_device_cuda_without_a_gpu_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    cfg = write_config(tmp_path / "c.yaml", max_steps=2, warmup_steps=0)
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg), "--set", "device=cuda")
    assert res.exit_code == 2
    assert "device: cuda" in res.output and "no CUDA GPU" in res.output
    assert "Traceback" not in res.output
    assert snapshot(home) == before
    assert run_cli(home, "train", str(cfg), "--run-name", "r").exit_code == 0
    res = run_cli(home, "generate", "r", "--prompt", "a", "--device", "cuda")
    assert res.exit_code == 2 and "no CUDA GPU" in res.output
    res = run_cli(home, "generate", "r", "--prompt", "a", "--device", "tpu")
    assert res.exit_code == 2 and "auto, cpu or cuda" in res.output
    assert run_cli(home, "generate", "r", "--prompt", "a", "--device", "cpu").exit_code == 0


def test_fsdp_with_lora_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name: m\nfinetune: lora\nstrategy: fsdp\n")
    res = run_cli(tmp_path, "train", str(cfg))
    assert res.exit_code == 2 and "strategy: ddp for LoRA" in res.output


def test_bad_input_in_a_2_process_job_is_reported_once_and_changes_nothing(
    long_cfg: tuple[Path, Path],
) -> None:
    home, cfg = long_cfg
    before = snapshot(home)
    base = [
        sys.executable,
        "-m",
        "llmforge",
        "--home",
        str(home),
        "train",
        str(cfg),
        "--nproc",
        "2",
    ]
    # Every rank finds the data missing; only rank 0 says so.
    res = subprocess.run(
        [*base, "--set", "data_path=/nonexistent/corpus.txt"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("Error:") == 1 and "/nonexistent/corpus.txt" in res.stderr
    # One process would fit in 1 GB; two processes sharing this machine's 1 GB do not.
    res = subprocess.run(
        [*base, "--set", "memory_limit_gb=1.0"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("Error:") == 1
    assert "shared by the 2 processes on this machine" in res.stderr
    assert "strategy: fsdp" in res.stderr and "Traceback" not in res.stderr
    assert snapshot(home) == before
    # The same limit fits one process.
    one = run_cli(home, "train", str(cfg), "--set", "memory_limit_gb=1.0", "--max-steps", "2")
    assert one.exit_code == 0, one.output


def test_a_one_process_fsdp_run_leaves_no_rendezvous_variables_behind(
    long_cfg: tuple[Path, Path],
) -> None:
    home, cfg = long_cfg
    res = run_cli(home, "train", str(cfg), "--set", "strategy=fsdp", "--max-steps", "2")
    assert res.exit_code == 0, res.output
    assert (latest_checkpoint(home / "runs" / "long") / "shards" / ".metadata").is_file()
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
    import torch.distributed

    assert not torch.distributed.is_initialized()
