"""The generation scheduler: one thread runs every served model, one piece of text at a time.

**Why one thread.** Each target has one model copy in memory, and a model (its KV caches, its
``train``/``eval`` mode) must only ever be driven by one thread. One scheduler thread runs all
of them: it takes a step of each model's running request in turn, so two targets share the
device fairly instead of two threads' torch kernels fighting for the same cores (on a CPU each
would start its own team of ``torch.get_num_threads()`` OpenMP threads). The event loop only
ever awaits queues, so it stays responsive however long a generation takes.

**Admission.** Each model runs one request at a time (no batching: a batch computes with
other matrix shapes, whose floating-point sums differ, and the greedy tokens would no longer
be exactly those of ``llmforge generate``). Up to ``max_waiting`` more wait in a FIFO per
model; beyond that :meth:`Scheduler.submit` raises :class:`Overloaded`. A job whose client
goes away is withdrawn from the queue, or stopped before its next token when it is running,
which frees its place at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmforge.adapters.base import ModelAdapter
from llmforge.serving.jobs import Event, Generation, Job, Overloaded, Run, ShuttingDown

log = logging.getLogger("llmforge.serve")


@dataclass
class _ModelQueue:
    adapter: ModelAdapter
    waiting: deque[Job] = field(default_factory=deque)
    running: Run | None = None
    mean_seconds: float | None = None  # moving average of a job's duration, for Retry-After


class Scheduler:
    """Runs the generation of every served model on one thread (see the module docstring).

    Args:
        adapters: The models by served name.
        max_waiting: Requests that may wait per model while one runs.
    """

    def __init__(self, adapters: Mapping[str, ModelAdapter], max_waiting: int) -> None:
        if max_waiting < 1:
            raise ValueError("max_waiting must be 1 or more")
        self.max_waiting = max_waiting
        self._queues = {name: _ModelQueue(a) for name, a in adapters.items()}
        self._cond = threading.Condition()
        self._stopping = False
        self._aborting = False
        self._thread: threading.Thread | None = None

    # -- the event loop's side ------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduler thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmforge-generate", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current token; every unfinished job gets an error event."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def abort_all(self) -> None:
        """End every job, running or waiting, with a :class:`ShuttingDown` error event.

        The scheduler thread does it before its next token (only it may touch a running
        generator); later submissions are still served.
        """
        with self._cond:
            self._aborting = True
            self._cond.notify_all()

    def submit(self, model: str, generation: Generation, loop: asyncio.AbstractEventLoop) -> Job:
        """Queue a job for ``model``.

        Raises:
            Overloaded: If ``max_waiting`` jobs already wait for that model.
            ShuttingDown: If the scheduler is stopping.
        """
        job = Job(model, generation, loop)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("The server is shutting down.")
            q = self._queues[model]
            if len(q.waiting) + (q.running is not None) > self.max_waiting:
                raise Overloaded(model, len(q.waiting), self._retry_after(q))
            job.withdraw = self.withdraw
            q.waiting.append(job)
            self._cond.notify()
        return job

    def withdraw(self, job: Job) -> None:
        """Drop ``job`` from its queue if it has not started (a running one stops itself)."""
        with self._cond:
            waiting = self._queues[job.model].waiting
            if job in waiting:
                waiting.remove(job)

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread is running (false before start and after a failure)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @staticmethod
    def _retry_after(q: _ModelQueue) -> int:
        # A place frees when the running job ends: about one job's duration.
        return max(1, min(60, math.ceil(q.mean_seconds or 1.0)))

    # -- the scheduler thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while (runs := self._next_round()) is not None:
                for run in runs:
                    self._step(run)
        except BaseException:  # a bug here would leave every request waiting forever
            log.exception("The generation scheduler failed; the server answers 503 now.")
            raise
        finally:
            with self._cond:
                self._stopping = True  # submit refuses, /health reports it
            self._abandon_all()

    def _interrupted(self, job: Job) -> bool:
        return job.cancelled or self._aborting or self._stopping

    def _step(self, run: Run) -> None:
        try:
            ended = run.job.cancelled or run.step()
        except Exception as e:  # e.g. NaN logits (CheckpointError): the job fails alone
            run.close()
            run.job.post(Event("error", error=e))
            ended = True
        if ended:
            self._retire(run)

    def _next_round(self) -> list[Run] | None:
        """The running jobs, one per model, after starting waiting ones; None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._aborting:
                    self._aborting = False
                    self._abandon_all()
                for q in self._queues.values():
                    while q.running is None and q.waiting:
                        job = q.waiting.popleft()
                        if not job.cancelled:
                            q.running = Run(job, q.adapter, lambda j=job: self._interrupted(j))
                runs = [q.running for q in self._queues.values() if q.running is not None]
                if runs:
                    return runs
                self._cond.wait()

    def _retire(self, run: Run) -> None:
        if run.job.cancelled:
            run.close()
        seconds = time.perf_counter() - run.started
        with self._cond:
            q = self._queues[run.job.model]
            q.running = None
            if not run.job.cancelled:
                q.mean_seconds = (
                    seconds if q.mean_seconds is None else (0.8 * q.mean_seconds + 0.2 * seconds)
                )

    def _abandon_all(self) -> None:
        gone = ShuttingDown("The server is shutting down.")
        with self._cond:  # re-entrant: _next_round calls it holding the lock
            for q in self._queues.values():
                jobs = list(q.waiting)
                q.waiting.clear()
                if q.running is not None:
                    q.running.close()
                    jobs.append(q.running.job)
                    q.running = None
                for job in jobs:
                    job.post(Event("error", error=gone))
