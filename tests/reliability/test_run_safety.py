"""A training run is never lost, overwritten or written outside the workspace (issue 15).

The base workspace holds one tiny from-scratch run, `runs/tiny`, with checkpoints at steps 2,
4 and 6. Each test copies it, breaks or races one thing, and checks that the command is
refused with one clear paragraph (never "This is a bug"), and that the workspace is
byte-identical afterwards when the command was refused.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import snapshot
from llmforge.checkpoints.manifest import write_manifest
from train_helpers import run_cli, small_corpus, write_config

RUN = "tiny"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run-safety")
    ws = root / "ws"
    ws.mkdir()
    data = small_corpus(root / "c.txt")
    cfg = write_config(
        root / f"{RUN}.yaml", data_path=str(data), max_steps=6, save_interval=2, keep_last=5
    )
    res = run_cli(ws, "train", str(cfg))
    assert res.exit_code == 0, res.output
    return ws, cfg


@pytest.fixture
def ws(base: tuple[Path, Path], tmp_path: Path) -> Path:
    out = tmp_path / "ws"
    shutil.copytree(base[0], out)
    return out


def ckpt(ws: Path, step: int) -> Path:
    return ws / "runs" / RUN / "checkpoints" / f"step-{step:06d}"


def refused(ws: Path, *args: str, code: int | None = None) -> str:
    """Run a command that must be refused; return its stderr (one clear paragraph)."""
    before = snapshot(ws)
    res = run_cli(ws, *args)
    assert res.exit_code != 0, res.output
    if code is not None:
        assert res.exit_code == code, res.output
    err = " ".join(res.stderr.split())
    assert err.startswith("Error:") and "This is a bug" not in err and "Traceback" not in err
    assert snapshot(ws) == before
    return err


# -- one training of a run at a time (item 3) -------------------------------------------------
def _start_holder(ws: Path, cfg: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "llmforge", "--home", str(ws), "train", str(cfg)]
    cmd += ["--resume", "latest", "--max-steps", "100000", "--set", "save_interval=100000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    line = proc.stdout.readline()
    while line and not line.startswith(b"step ") and time.monotonic() < deadline:
        line = proc.stdout.readline()
    assert line.startswith(b"step "), "the holder never started training"
    return proc


def test_a_running_run_refuses_a_second_training_and_a_killed_ones_lock_is_stale(
    ws: Path, base: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = base[1]
    proc = _start_holder(ws, cfg)
    try:
        lock = ws / "runs" / RUN / ".lock"
        assert json.loads(lock.read_text())["pid"] == proc.pid
        for args in ((), ("--resume", "latest"), ("--resume", f"{RUN}/step-6")):
            res = run_cli(ws, "train", str(cfg), *args)
            err = " ".join(res.stderr.split())
            assert res.exit_code == 1, res.output
            assert "is being trained right now" in err and f"process {proc.pid}" in err, err
        # Reading the run's finished checkpoints needs no lock.
        assert run_cli(ws, "ckpt", "list").exit_code == 0
        res = run_cli(ws, "generate", f"{RUN}/step-6", "-n", "3", "--seed", "0")
        assert res.exit_code == 0, res.output
        res = run_cli(ws, "ckpt", "register", f"{RUN}/step-6", "--name", "while-running")
        assert res.exit_code == 0, res.output
        res = run_cli(ws, "ckpt", "export", f"{RUN}/step-4", str(ws / "exported"))
        assert res.exit_code == 0, res.output
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert lock.exists()  # a SIGKILL leaves the file; the OS released the lock itself
    res = run_cli(ws, "train", str(cfg), "--resume", "latest", "--max-steps", "8")
    assert res.exit_code == 0, res.output
    assert "no longer running" in res.stdout and "taken over" in res.stdout
    assert not lock.exists()  # released at the end of the run


# -- a resume never overwrites newer checkpoints (item 4) ------------------------------------
def test_resuming_an_older_checkpoint_is_refused_naming_the_newer_ones(
    ws: Path, base: tuple[Path, Path]
) -> None:
    err = refused(ws, "train", str(base[1]), "--resume", f"{RUN}/step-2")
    assert "step-000004, step-000006" in err and "overwrite" in err
    assert f"--init-from {RUN}/step-2 --name NEW_MODEL" in err and "--resume latest" in err


def _set(file: str, key: str, value: object) -> Callable[[Path], None]:
    def edit(ck: Path) -> None:
        data = json.loads((ck / file).read_text())
        data[key] = value
        (ck / file).write_text(json.dumps(data))
        # crafted to match its manifest (as a checkpoint from elsewhere can be): the schema
        # checks behind the manifest must hold on their own
        write_manifest(ck)

    return edit


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_set("trainer_state.json", "step", -1), "'step'"),
        (_set("trainer_state.json", "step", 2.5), "'step'"),
        (_set("trainer_state.json", "step", "6"), "'step'"),
        (_set("trainer_state.json", "step", 4), "says step 4"),
        (_set("trainer_state.json", "losses", "many"), "'losses'"),
        (_set("trainer_state.json", "elapsed", "fast"), "'elapsed'"),
        (_set("trainer_state.json", "rng", None), "'rng'"),
        (_set("trainer_state.json", "skipped_steps", -3), "'skipped_steps'"),
        (_set("meta.json", "step", -6), "'step'"),
        (_set("meta.json", "lineage", "x" * 10_000), "'lineage'"),
        (_set("meta.json", "config", [1, 2]), "'config'"),
        (_set("meta.json", "tokenizer", 7), "'tokenizer'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_damaged_checkpoint_file_is_a_clear_error(
    ws: Path, base: tuple[Path, Path], edit: Callable[[Path], None], needle: str
) -> None:
    edit(ckpt(ws, 6))
    err = refused(ws, "train", str(base[1]), "--resume", "latest")
    assert "checkpoint is damaged" in err and needle in err and len(err) < 700, err


# -- paths and names stay inside the workspace (item 8) --------------------------------------
def test_output_dir_outside_the_workspace_is_refused(
    ws: Path, base: tuple[Path, Path], tmp_path: Path
) -> None:
    for where in ("../outside", str(tmp_path / "elsewhere"), "runs/../../outside"):
        err = refused(
            ws, "train", str(base[1]), "--run-name", "new", "--set", f"output_dir={where}"
        )
        assert "outside the workspace" in err, err
    assert not (tmp_path / "outside").exists() and not (tmp_path / "elsewhere").exists()
    # a run folder that is a symlink out of the workspace is refused too
    (tmp_path / "target").mkdir()
    (ws / "runs" / "linked").symlink_to(tmp_path / "target")
    assert "outside the workspace" in refused(ws, "train", str(base[1]), "--run-name", "linked")
    assert not any((tmp_path / "target").iterdir())
    # a checkpoint outside the workspace is not resumed (that would write there)
    shutil.copytree(ws / "runs", tmp_path / "away" / "runs")
    away = tmp_path / "away" / "runs" / RUN / "checkpoints" / "step-000006"
    assert "outside the workspace" in refused(ws, "train", str(base[1]), "--resume", str(away))


@pytest.mark.parametrize("name", ["a" * 5000, "a/b", "..", ".hidden", "x/../../y"])
def test_unusable_run_names_are_refused(ws: Path, base: tuple[Path, Path], name: str) -> None:
    err = refused(ws, "train", str(base[1]), "--run-name", name, code=2)
    assert "run_name" in err and len(err) < 700


# -- hostile YAML and absurd values (items 10 and 14) ----------------------------------------
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_a_yaml_alias_bomb_config_is_refused_quickly(ws: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB + "max_steps: *i\n")
    assert bomb.stat().st_size < 1024
    start = time.monotonic()
    err = refused(ws, "train", str(bomb), code=2)
    assert time.monotonic() - start < 10 and "aliases" in err and len(err) < 600


def test_values_within_the_yaml_bounds_are_still_echoed_briefly(ws: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "wide.yaml"
    cfg.write_text(BOMB.split("e:")[0] + "model_name: [*d, *d, *d, *d, *d, *d]\n")
    err = refused(ws, "train", str(cfg), code=2)
    assert "key 'a'" in err or "model_name" in err
    assert len(err) < 800, err[:400]


def _runs_is_a_file(ws: Path) -> None:
    shutil.rmtree(ws / "runs")
    (ws / "runs").write_text("not a folder\n")


@pytest.mark.parametrize(
    ("args", "setup", "needle"),
    [
        (("--set", f"seed={2**70}"), None, "key 'seed'"),
        (("--set", "seed=-5"), None, "key 'seed'"),
        (("--stop-at", "-1"), None, "--stop-at"),
        (("--stop-at", "0"), None, "--stop-at"),
        (("--stop-at", "7"), None, "--stop-at 7"),
        (("--max-steps", "0"), None, "key 'max_steps'"),
        (("--max-steps", "-1"), None, "key 'max_steps'"),
        (("--set", "block_size=1000000000"), None, "key 'block_size'"),
        (("--set", "batch_size=0"), None, "key 'batch_size'"),
        (("--set", "memory_limit_gb=.inf"), None, "key 'memory_limit_gb'"),
        (("--set", "dist_timeout=.inf"), None, "key 'dist_timeout'"),
        ((), _runs_is_a_file, "is a file"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_absurd_run_settings_are_refused_before_anything_is_written(
    ws: Path, base: tuple[Path, Path], args: tuple[str, ...], setup: Callable | None, needle: str
) -> None:
    if setup is not None:
        setup(ws)
    err = refused(ws, "train", str(base[1]), "--run-name", "fresh", *args)
    assert needle in err, err


def test_stop_at_must_be_after_the_step_a_resume_starts_from(
    ws: Path, base: tuple[Path, Path]
) -> None:
    err = refused(
        ws, "train", str(base[1]), "--resume", "latest", "--max-steps", "9", "--stop-at", "5"
    )
    assert "--stop-at 5" in err and "resumes from (6)" in err


def test_a_lock_that_is_not_a_file_is_a_clear_error(ws: Path, base: tuple[Path, Path]) -> None:
    (ws / "runs" / RUN / ".lock").mkdir()
    err = refused(ws, "train", str(base[1]), "--resume", "latest", "--max-steps", "7")
    assert "Cannot take the run's lock" in err


def test_a_config_path_that_is_a_directory(ws: Path, tmp_path: Path) -> None:
    assert "is a directory" in refused(ws, "train", str(tmp_path), code=2)


# -- memory is estimated from the config, before anything is built (item 15) -----------------
def _child_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def test_a_dry_run_at_the_largest_documented_sizes_is_refused_without_allocating(
    ws: Path, base: tuple[Path, Path]
) -> None:
    cmd = [sys.executable, "-m", "llmforge", "--home", str(ws), "train", str(base[1])]
    cmd += ["--run-name", "huge", "--dry-run"]
    cmd += ["--set", "n_layers=128", "--set", "d_model=16384", "--set", "n_heads=256"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = " ".join(proc.stderr.split())
    assert "needs about" in err and "TB" in err and "was not built" in err, err
    assert "This is a bug" not in err
    assert time.monotonic() - start < 120
    assert _child_peak_rss() < 3 * 2**30  # the 1.6 TB model was never allocated


def _claim_huge(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(n_layers=128, d_model=16384, n_heads=256)
    (folder / "config.json").write_text(json.dumps(cfg))
    write_manifest(folder)  # a consistent checkpoint that claims huge sizes


@pytest.mark.parametrize("how", ["resume", "init-from"])
def test_a_checkpoint_claiming_huge_sizes_is_refused_before_it_is_built(
    ws: Path, base: tuple[Path, Path], how: str
) -> None:
    _claim_huge(ckpt(ws, 6))
    if how == "resume":
        args = ("--resume", "latest")
    else:
        args = ("--init-from", f"{RUN}/step-6", "--name", "branch")
    err = refused(ws, "train", str(base[1]), *args)
    assert "needs about" in err and "was not built" in err, err
