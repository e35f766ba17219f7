"""One process trains a run at a time: the lock file ``runs/RUN/.lock``.

The lock is an ``flock`` on that file, so the operating system releases it when its holder
exits in any way (a SIGKILL, a crash, a power cut included): a lock file left behind by a
killed run is *stale* and is taken over, never obeyed. The file records its holder (pid, host,
start time) so that a refused second ``llmforge train`` can say who trains the run.

Only the process that writes the run takes it: one process, or rank 0 of a multi-process
job. Reading a run (``ckpt list``, ``generate``, ``ckpt register``/``export`` of its finished
checkpoints) needs no lock: checkpoints appear by an atomic rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import RunLockedError, TrainingError
from llmforge.untrusted import load_json

LOCK_NAME = ".lock"
# A process that only looks (probe) holds the file shared for microseconds; an acquirer that
# meets it tries again for this long before it concludes that a trainer holds the run.
_RETRY_S = 1.0


@dataclass
class RunLock:
    """The held lock of one run; :meth:`release` it when the run ends (exit releases it too).

    Attributes:
        path: ``runs/RUN/.lock``.
        stale: The record a killed holder left in the file, if there was one.
    """

    path: Path
    fd: int | None = None
    stale: dict[str, Any] | None = field(default=None)

    def release(self) -> None:
        """Remove the lock file (if it is still this lock's) and let go. Idempotent."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # before unlocking: nobody takes a doomed file
        os.close(self.fd)
        self.fd = None


def _record(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 4096, 0)
        data = load_json(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process (it left no record)"
    from llmforge.untrusted import brief

    pid, host, started = record.get("pid"), record.get("host"), record.get("started")
    here = host == socket.gethostname()
    return (
        f"process {brief(pid, 20)}"
        + ("" if here else f" on host {brief(host, 60)}")
        + (f", started {brief(started, 40).strip(chr(39))}" if started else "")
    )


def _refusal(run_dir: Path, record: dict[str, Any] | None) -> RunLockedError:
    return RunLockedError(
        f"The run {run_dir.name!r} is being trained right now by {_describe(record)} "
        f"(it holds {run_dir / LOCK_NAME}). Two trainings of one run would interleave its "
        "metrics and overwrite each other's checkpoints, so this one does not start; nothing "
        "was written.",
        "Wait for that training to finish (or stop it with Ctrl-C: it saves a checkpoint, then "
        "continue with --resume latest), or train this one under another --run-name.",
    )


def check_free(run_dir: Path) -> None:
    """Refuse at once if a live process holds ``run_dir``'s lock. Writes nothing.

    Raises:
        RunLockedError: Naming the holder (pid, host, start time).
    """
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file (or no run folder): nobody trains the run
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(run_dir, _record(fd)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def acquire(run_dir: Path) -> RunLock:
    """Take ``run_dir``'s lock for this process (creating the folder), recording who holds it.

    Raises:
        RunLockedError: If a live process holds it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    deadline = time.monotonic() + _RETRY_S
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a folder or something else in its place, or no permission
            raise TrainingError(
                f"Cannot take the run's lock {path}: {e.strerror or type(e).__name__}.",
                "It must be a plain file llmforge can write (it is safe to remove it while no "
                "training of this run is running).",
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _record(fd)
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise _refusal(run_dir, record) from None
        try:  # the previous holder may have removed the file between our open and flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _record(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        return RunLock(path, fd, stale)


def stale_note(lock: RunLock) -> str | None:
    """A start-up line when the lock was taken over from a killed process, else None."""
    if lock.stale is None:
        return None
    return (
        f"The run's lock file was left by {_describe(lock.stale)}, which is no longer running "
        "(killed?); it was taken over."
    )
