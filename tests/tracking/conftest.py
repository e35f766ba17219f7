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

import signal
import subprocess
import sys

import pytest
from tracking_helpers import KILL_AT, QUIET, listed, ok

from llmforge.tracking.tensorboard import TB_DIR, raw_scalar_points
from train_helpers import small_corpus, write_config


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
