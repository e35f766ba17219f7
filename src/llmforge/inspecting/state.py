"""Whether a run is running, finished, stopped or failed.

Four statuses, from what is on disk (nothing here needs the trainer or torch):

- **running**: a live process holds the run's lock (``runs/RUN/.lock``, an ``flock`` that the
  operating system releases when its holder dies in any way). Nothing else counts: a status
  file that says "running" is a claim, the lock is the proof.
- **finished**: not running, and the last training segment reached ``max_steps`` and saved
  its final checkpoint there.
- **stopped**: not running, ended early *on request* (``--stop-at``, Ctrl-C): the trainer saved
  a checkpoint at the very step it stopped, so ``--resume latest`` continues with nothing lost.
- **failed**: not running, and the last segment ended any other way: an error (a NaN loss, a
  full disk, a lost peer), an abort (a second Ctrl-C), or a kill (SIGKILL, the OOM killer, a
  power cut). The steps after the last checkpoint are lost; the run resumes from that
  checkpoint. ``reason`` says which: ``error``, ``killed`` or ``incomplete``.

A killed run is *failed*, not *stopped*: nobody asked it to stop, work since its last
checkpoint is gone, and the user has to look at it (was it the OOM killer?) before resuming.
"stopped" keeps one promise, "nothing was lost", which a kill cannot keep.

Each training segment records its end in ``runs/RUN/status.json``
(:mod:`llmforge.tracking.run_status`, through the trainer's ``on_end`` event): ``running``
when it starts, its outcome when it ends. A segment that was killed never writes its outcome,
so "running" in the file with a free lock means *killed*.
Runs trained before the file existed are judged from their checkpoints and metrics
(``inferred``): a lock file left behind means killed (a clean exit removes it), a checkpoint at
``max_steps`` finished, metrics past the last checkpoint failed, else stopped.
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import RunLockedError
from llmforge.tracking.run_status import FAILED, FINISHED, RUNNING, STOPPED, read_status_file
from llmforge.training.run_lock import LOCK_NAME, check_free


@dataclass
class RunStatus:
    """A run's status and the facts it was judged from.

    Attributes:
        status: ``running``, ``finished``, ``stopped`` or ``failed``.
        reason: For ``failed``: ``error``, ``killed`` or ``incomplete``; else None.
        detail: One sentence for people (the error, who holds the lock, what was lost).
        inferred: True when the run has no status file and the status was deduced.
        holder: The lock's record (pid, host, started) while running.
    """

    status: str
    reason: str | None = None
    detail: str = ""
    inferred: bool = False
    holder: dict[str, Any] | None = field(default=None)


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The record of the live process that holds the run's lock, or None if nobody does.

    A shared, non-blocking probe (:func:`llmforge.training.run_lock.check_free`): it never
    blocks, and a trainer that starts at that instant retries past it.
    """
    try:
        check_free(run_dir)
    except RunLockedError:
        record: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads((run_dir / LOCK_NAME).read_text(encoding="utf-8"))
            record = raw if isinstance(raw, dict) else {}
        return record
    return None


def judge(
    run_dir: Path,
    checkpoint_step: int | None,
    max_steps: int | None,
    last_logged_step: int | None,
) -> RunStatus:
    """The status of a run from its lock, status file, checkpoints and metrics.

    Args:
        run_dir: The run's folder.
        checkpoint_step: The step of its newest complete checkpoint, or None.
        max_steps: The run's ``max_steps`` (from its current config.yaml), or None.
        last_logged_step: The highest step in metrics.jsonl, or None.
    """
    holder = lock_holder(run_dir)
    if holder is not None:
        who = f"process {holder.get('pid', '?')}"
        if holder.get("host") not in (None, socket.gethostname()):
            who += f" on {holder.get('host')}"
        return RunStatus(RUNNING, detail=f"trained by {who}", holder=holder)
    recorded = read_status_file(run_dir)
    state = recorded.get("status")
    if state in (FINISHED, STOPPED, FAILED):
        return RunStatus(state, recorded.get("reason"), str(recorded.get("error") or ""))
    if state == RUNNING:
        return RunStatus(
            FAILED,
            "killed",
            f"the process {recorded.get('pid', '?')} that started at step "
            f"{recorded.get('start_step', '?')} ended without a word (killed: SIGKILL, the OOM "
            "killer, a power cut?)",
        )
    return _inferred(run_dir, checkpoint_step, max_steps, last_logged_step)


def _inferred(
    run_dir: Path,
    checkpoint_step: int | None,
    max_steps: int | None,
    last_logged_step: int | None,
) -> RunStatus:
    """The status of a run without status.json (trained before it existed)."""
    if (run_dir / LOCK_NAME).exists():  # a clean exit removes it; a kill cannot
        return RunStatus(FAILED, "killed", "its lock file was left behind", inferred=True)
    if checkpoint_step is None:
        return RunStatus(FAILED, "incomplete", "no checkpoint was saved", inferred=True)
    if max_steps is not None and checkpoint_step >= max_steps:
        return RunStatus(FINISHED, inferred=True)
    if last_logged_step is not None and last_logged_step > checkpoint_step:
        lost = last_logged_step - checkpoint_step
        return RunStatus(
            FAILED, "incomplete", f"{lost} step(s) after the last checkpoint", inferred=True
        )
    return RunStatus(STOPPED, inferred=True)
