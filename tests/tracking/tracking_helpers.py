"""Helpers of the tracking tests (kept out of conftest.py: with several conftest.py files in
the suite, ``from conftest import`` can resolve to another folder's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmforge.tracking import series
from llmforge.tracking.tensorboard import TB_DIR, raw_scalar_points, read_scalars
from train_helpers import run_cli

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
