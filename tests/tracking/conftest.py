"""Fixtures of the tracking tests: one workspace trained once for the whole session.

``runs_home`` holds two real runs of a tiny from-scratch Transformer, both with
``report_to: [tensorboard]``:

- ``tiny``: stopped at step 5 (``--stop-at``), then resumed to its ``max_steps`` 8;
- ``killed``: SIGKILLed while its step-8 checkpoint was being written (so steps 5-8 and the
  validation at step 8 were logged past its last checkpoint, step 4), then resumed to 10 steps
  with ``schedule_on_extend: replan`` (the resumed steps get other learning rates, so the
  dead run's values differ from the survivors').

What the CLI said between the segments is kept in the fixture's dict.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmforge.tracking import series
from llmforge.tracking.tensorboard import TB_DIR, raw_scalar_points, read_scalars
from train_helpers import run_cli, small_corpus, write_config

KILL_AT = Path(__file__).parents[1] / "reliability" / "kill_at.py"
QUIET = {"sample_interval": 0, "threads": 1, "report_to": ["tensorboard"]}


def ok(home: Path, *args: str) -> str:
    """``llmforge --home HOME ARGS`` in-process; its output, asserting it succeeded."""
    res = run_cli(home, *args)
    assert res.exit_code == 0, res.output
    return res.output


def listed(home: Path, run: str) -> dict:
    """The run's row of ``runs list --json``."""
    rows = json.loads(ok(home, "runs", "list", "--json"))
    return next(r for r in rows if r["name"] == run)


def metrics_by_tag(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of metrics.jsonl, asserting no (tag, step) is there twice."""
    out: dict[str, dict[int, float]] = {}
    for rec in series.read_records(run_dir):
        for tag, value in series.tagged_metrics(rec).items():
            assert rec["step"] not in out.get(tag, {}), f"{tag} step {rec['step']} twice"
            out.setdefault(tag, {})[rec["step"]] = value
    return out


def assert_tensorboard_matches(run_dir: Path) -> None:
    """TensorBoard's own loader, and the raw event stream, show metrics.jsonl exactly."""
    want = metrics_by_tag(run_dir)
    got = read_scalars(run_dir / TB_DIR)  # EventAccumulator
    assert set(got) == set(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == sorted(points), tag  # each step once, none missing
        for step, value in got[tag]:
            assert value == pytest.approx(np.float32(points[step]), rel=1e-6, nan_ok=True)
    # No reader-side purge needed: the files themselves hold each (tag, step) once.
    keys = [(t, s) for t, s, _ in raw_scalar_points(run_dir / TB_DIR)]
    assert len(keys) == len(set(keys)) == sum(len(p) for p in want.values())


@pytest.fixture(scope="session")
def runs_home(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The workspace described in the module docstring, and what was seen on the way."""
    root = tmp_path_factory.mktemp("tracking")
    home = root / "ws"
    home.mkdir()
    data = str(small_corpus(root / "c.txt"))
    tiny = write_config(root / "tiny.yaml", data_path=data, **QUIET)
    ok(home, "train", str(tiny), "--stop-at", "5")
    seen: dict = {"home": home, "stopped_row": listed(home, "tiny")}
    ok(home, "train", str(tiny), "--resume", "latest")

    cfg = write_config(root / "killed.yaml", data_path=data, **QUIET)
    pattern = r"checkpoints/[^/]*step-000008[^/]*/"  # anything of step 8's checkpoint
    cmd = [sys.executable, str(KILL_AT), "write", pattern, "before", "--", "--home", str(home)]
    res = subprocess.run([*cmd, "train", str(cfg)], capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    run_dir = home / "runs" / "killed"
    seen["dead_points"] = {(t, s): v for t, s, v in raw_scalar_points(run_dir / TB_DIR)}
    seen["killed_row"] = listed(home, "killed")
    seen["killed_show"] = ok(home, "runs", "show", "killed")
    seen["killed_list"] = ok(home, "runs", "list")
    again = ("--resume", "latest", "--max-steps", "10", "--set", "schedule_on_extend=replan")
    ok(home, "train", str(cfg), *again)
    seen["root"] = root
    return seen
