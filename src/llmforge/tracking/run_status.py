"""``runs/RUN/status.json``: how each training segment of a run started and ended.

The trainer reports the end of :meth:`~llmforge.training.trainer.Trainer.fit` (``on_end``:
finished, stopped or failed); :class:`~llmforge.tracking.reporting.RunTracker` records it
here, with ``running`` when a segment starts. A segment that was killed never writes its
outcome, so ``running`` in the file while nobody holds the run's lock means *killed*
(``llmforge.inspecting.state`` judges that; the lock is the proof of running, the file a claim).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from llmforge.fsutil import atomic_write_json

STATUS_FILE = "status.json"
RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
# How many training segments (start to end) status.json keeps; older ones are dropped.
_MAX_SEGMENTS = 50


def read_status_file(run_dir: Path) -> dict[str, Any]:
    """``status.json`` of a run, or ``{}`` when it is missing or unreadable."""
    with contextlib.suppress(OSError, ValueError, RecursionError):
        data = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def mark_started(run_dir: Path, start_step: int, facts: dict[str, Any]) -> None:
    """Record that a training segment starts at ``start_step`` (replaces the last outcome)."""
    old = read_status_file(run_dir)
    segments = [s for s in old.get("segments", []) if isinstance(s, dict)][-_MAX_SEGMENTS + 1 :]
    segments.append({"start_step": start_step, "started": _now(), "pid": os.getpid()})
    data = {
        **facts,
        "status": RUNNING,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": segments[-1]["started"],
        "start_step": start_step,
        "segments": segments,
    }
    atomic_write_json(run_dir / STATUS_FILE, data)


def mark_ended(run_dir: Path, outcome: dict[str, Any]) -> None:
    """Record how the current segment ended: ``outcome`` has status, step, reason, error."""
    data = read_status_file(run_dir)
    for key in ("reason", "error"):
        data.pop(key, None)  # an earlier segment's
    data.update(outcome)
    data["ended"] = _now()
    segments = data.get("segments") or [{}]
    segments[-1].update(
        end_step=outcome.get("step"), ended=data["ended"], outcome=outcome["status"]
    )
    data["segments"] = segments
    atomic_write_json(run_dir / STATUS_FILE, data)
