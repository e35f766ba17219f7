"""``llmforge train CONFIG --nproc N``: start N local processes the way ``torchrun`` does.

It runs torchrun's own launcher (``torch.distributed.launcher.api.elastic_launch``, what the
``torchrun`` script calls) with a standalone rendezvous on a free local port, each process
running ``python -m llmforge train ...`` with the same arguments. When a process fails, the
launcher stops the others and reports which rank failed and how; torchrun's own log lines are
kept out of the way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmforge.errors import EXIT_INTERRUPTED, TrainingError

if TYPE_CHECKING:
    from llmforge.config import TrainingConfig
    from llmforge.workspace import Workspace

NPROC_ENV = "LLMFORGE_NPROC"  # tells the ranks how they were started (for the resume hint)


def in_job() -> bool:
    """Whether this process is one rank of a multi-process (torchrun) job."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def job_rank() -> int:
    """This process's rank in a multi-process job (0 when it is not part of one)."""
    try:
        return int(os.environ.get("RANK", "0")) if in_job() else 0
    except ValueError:
        return 0


def launch_run(
    ws: Workspace, cfg: TrainingConfig, argv: Sequence[str], nproc: int, resume_command: str
) -> int:
    """``llmforge train --nproc N``: refuse a run another process trains, then start the job.

    Args:
        ws: The workspace (every process uses it).
        cfg: The run's config (to find its folder and checkpoints).
        argv: What each process runs after ``llmforge`` (``train CONFIG ...``).
        nproc: Processes to start.
        resume_command: How to continue the run (for the failure message).

    Returns:
        The exit code of the job (see :func:`launch_local`).

    Raises:
        RunLockedError: If a live process trains the run (before any process starts).
        TrainingError: If a process died from a signal.
    """
    from llmforge.checkpoints.layout import latest_checkpoint
    from llmforge.training.run_folder import run_dir_for
    from llmforge.training.run_lock import check_free
    from llmforge.workspace import HOME_ENV

    check_free(run_dir_for(ws, cfg))  # a run in training: refused before N processes start
    return launch_local(
        argv,
        nproc,
        env={HOME_ENV: str(ws.root)},  # the ranks use this workspace
        last_checkpoint=lambda: latest_checkpoint(run_dir_for(ws, cfg)),
        resume_command=resume_command,
    )


def launch_local(
    argv: Sequence[str],
    nproc: int,
    *,
    last_checkpoint: Callable[[], Path | None] = lambda: None,
    resume_command: str = "",
    env: dict[str, str] | None = None,
    shutdown_timeout: int | None = None,
) -> int:
    """Run ``python -m llmforge ARGV`` in ``nproc`` processes on this machine; wait for all.

    Args:
        argv: The arguments after ``llmforge`` (``train CONFIG ...``, without ``--nproc``).
        nproc: Processes to start (ranks 0..nproc-1).
        last_checkpoint: Finds the run's newest complete checkpoint (for the failure message).
        resume_command: How to continue the run (for the failure message).
        env: Extra environment variables for the processes.
        shutdown_timeout: Seconds the processes get after Ctrl-C (to finish the step and save
            a checkpoint) or after another one failed, before SIGKILL. Default:
            ``$TORCH_ELASTIC_SHUTDOWN_TIMEOUT``, else 60.

    Returns:
        0 when every process succeeded, the exit code of a process that reported its own
        error (it printed the message itself), or 130 after Ctrl-C.

    Raises:
        TrainingError: A process died from a signal (killed, crashed, out of memory), so no
            process reported why; the message names the rank, its pid and the signal.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    config = _launch_config(nproc, shutdown_timeout)
    # torchrun's log lines stay out of the way; they also say which processes the launcher
    # itself signalled while shutting the job down (those were alive, so they are no cause).
    elastic = logging.getLogger("torch.distributed.elastic")
    watcher = _SignalledPids()
    elastic.addHandler(watcher)
    propagate, elastic.propagate = elastic.propagate, False
    try:
        with _environment({**(env or {}), NPROC_ENV: str(nproc)}):
            elastic_launch(config, sys.executable)("-m", "llmforge", *argv)
    except ChildFailedError as e:
        return _failed(e, watcher.pids, nproc, last_checkpoint, resume_command)
    except SignalException as e:
        if e.sigval == signal.SIGINT:
            return EXIT_INTERRUPTED
        raise
    finally:
        elastic.removeHandler(watcher)
        elastic.propagate = propagate
    return 0


def _launch_config(nproc: int, shutdown_timeout: int | None) -> Any:
    """torchrun's launch config for ``nproc`` processes with a standalone local rendezvous."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    if shutdown_timeout is None:
        shutdown_timeout = int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "60"))
    # Older torch has no shutdown_timeout (its launcher waits its fixed 30 s).
    grace = (
        {"shutdown_timeout": shutdown_timeout}
        if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}
        else {}
    )
    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"llmforge-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # port 0: a free port, like torchrun --standalone
        max_restarts=0,
        monitor_interval=0.2,
        logs_specs=DefaultLogsSpecs(),
        **grace,
    )


@contextlib.contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """Set ``extra`` in this process's environment (the processes inherit it), then restore."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failed(
    e: Any,
    signalled: set[int],
    nproc: int,
    last_checkpoint: Callable[[], Path | None],
    resume_command: str,
) -> int:
    """The exit code of a failed job, or the error when a process died from a signal.

    The cause is a process that failed on its own (the launcher did not signal it); one killed
    by a signal comes before one that exited with an error (that one lost contact).
    """
    causes = [kv for kv in e.failures.items() if kv[1].pid not in signalled]
    rank, failure = min(
        causes or list(e.failures.items()),
        key=lambda kv: (0 if kv[1].exitcode < 0 else 1, kv[1].timestamp, kv[0]),
    )
    if failure.exitcode >= 0:
        return failure.exitcode or 1  # the rank printed its own error
    ckpt = last_checkpoint()
    where = (
        f"The last complete checkpoint, {ckpt}, is intact."
        if ckpt
        else "No checkpoint had been written yet."
    )
    raise TrainingError(
        f"Rank {rank} of {nproc} (pid {failure.pid}) was killed by {failure.signal_name()}"
        f" (exit code {failure.exitcode}); the other processes were stopped. {where}",
        (
            "If the machine ran out of memory (see `dmesg`), lower batch_size or use "
            "strategy: fsdp; then continue with: " + resume_command
        )
        if resume_command
        else None,
    ) from None


class _SignalledPids(logging.Handler):
    """Collects the pids that torch's launcher signals (SIGTERM, then SIGKILL) when it stops
    the job, from its log records; prints nothing."""

    _PID = re.compile(r"(?:process|Process) (\d+)")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pids: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "closing signal" in msg or "Closing process" in msg or "forcefully exiting" in msg:
            m = self._PID.search(msg)
            if m:
                self.pids.add(int(m.group(1)))
