"""``report_to``: send every metric of a run to TensorBoard, trackio, wandb or MLflow.

The trainer knows nothing of trackers. Rank 0 (the one process that writes the run) gets a
:class:`RunTracker` among its callbacks; it records the run's status (``status.json``) and
hands each ``metrics.jsonl`` record to the configured reporters, under the same tags and steps
(:mod:`llmforge.tracking.series`).

Resume exactness. ``metrics.jsonl`` is truncated to the resumed step when a run resumes, so a
step computed after the last checkpoint by a run that was then killed is replaced by the
resumed run's value. Reporters must show the same thing:

- a *live* reporter (TensorBoard) gets every record at once; on resume it drops what it holds
  past the resumed step (event files rewritten, plus TensorBoard's own purge marker);
- the others cannot take a step back (wandb refuses a step that is not larger than the last;
  MLflow and trackio keep both values of a step), so they get records only once a checkpoint
  covers them, at ``on_checkpoint``. A record past the last checkpoint never reaches them: if
  the run dies, the resume recomputes that step and sends it then. The price is that their
  curves move in ``save_interval`` steps.

A reporter that fails (its package raises, the disk is full, a server is gone) is reported
once, on stderr, and gets nothing more in this run; training goes on, and ``metrics.jsonl``
still has every metric.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import ConfigError
from llmforge.tracking import run_status, series
from llmforge.tracking.metrics import METRICS_FILE
from llmforge.tracking.reporter import Reporter, RunInfo, flat_hparams
from llmforge.untrusted import terminal_text

REPORTERS = ("tensorboard", "trackio", "wandb", "mlflow")
# The package each reporter needs, and how to install it.
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "trackio": ("trackio", "pip install trackio"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow (or mlflow-skinny with a server to log to)"),
}


def check_report_to(names: list[str]) -> None:
    """Refuse, before anything is written, a ``report_to`` whose package is not installed.

    Raises:
        ConfigError: Naming the missing packages and how to install them.
    """
    missing = [n for n in names if importlib.util.find_spec(PACKAGES[n][0]) is None]
    if missing:
        how = "; ".join(f"{n}: {PACKAGES[n][1]}" for n in missing)
        raise ConfigError(
            f"report_to names {', '.join(missing)}, but "
            f"{'its package is' if len(missing) == 1 else 'their packages are'} not installed "
            "(trackers are optional dependencies). Nothing was written.",
            f"Install {'it' if len(missing) == 1 else 'them'} ({how}), or drop "
            f"{'it' if len(missing) == 1 else 'them'} from report_to (--set report_to=none).",
        )


def make_reporter(name: str) -> Reporter:
    """A new, unstarted reporter for a ``report_to`` name (its package imported lazily)."""
    if name == "tensorboard":
        from llmforge.tracking.tensorboard import TensorBoardReporter

        return TensorBoardReporter()
    from llmforge.tracking import trackers

    return {
        "trackio": trackers.TrackioReporter,
        "wandb": trackers.WandbReporter,
        "mlflow": trackers.MlflowReporter,
    }[name]()


def _stderr_warning(message: str) -> None:
    # Library code must not depend on the CLI's console; a Rich live bar captures stderr and
    # prints this above itself.
    print(terminal_text(f"Warning: {message}"), file=sys.stderr, flush=True)


@dataclass
class RunTracker:
    """The trainer callback that records a run's status and feeds its reporters.

    Only rank 0 has one (``prepare_run`` gives callbacks to rank 0 alone), so a ``--nproc``
    job reports once.

    Attributes:
        run: The run.
        reporters: Started by :meth:`start`; a failed one is dropped from this list.
        warn: Where the one warning per failed reporter goes.
    """

    run: RunInfo
    reporters: list[Reporter] = field(default_factory=list)
    warn: Callable[[str], None] = _stderr_warning
    _pending: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    _outcome: str | None = None
    _status_ok: bool = True

    def start(self) -> RunTracker:
        """Record the segment's start and open every reporter; returns self."""
        facts = {
            "run_name": self.run.run_name,
            "max_steps": self.run.max_steps,
            "tokens_per_step": self.run.tokens_per_step,
            "world_size": self.run.world_size,
            "report_to": [r.name for r in self.reporters],
        }
        self._write_status(run_status.mark_started, self.run.start_step, facts)
        hparams = flat_hparams(self.run.hparams)
        backlog: list[dict[str, Any]] | None = None
        for rep in list(self.reporters):
            self._call(rep, "start", rep.start, self.run, hparams)
            if rep in self.reporters and rep.fresh and self.run.resumed:
                # metrics.jsonl was truncated to the resumed step: all of it is final
                if backlog is None:
                    backlog = series.read_records(self.run.run_dir)
                for rec in backlog:
                    metrics = series.tagged_metrics(rec)
                    self._call(rep, "replay", rep.log, int(rec["step"]), metrics)
                self._call(rep, "flush", rep.flush)
        return self

    def _write_status(self, fn: Callable[..., None], *args: Any) -> None:
        if not self._status_ok:
            return
        try:
            fn(self.run.run_dir, *args)
        except OSError as e:
            self._status_ok = False
            self.warn(
                f"Could not write {self.run.run_dir / run_status.STATUS_FILE} "
                f"({e.strerror or e}); `llmforge runs` will judge this run from its "
                "checkpoints. Training goes on."
            )

    def _call(self, rep: Reporter, what: str, fn: Callable[..., None], *args: Any) -> None:
        """Run one reporter method; on failure warn once and stop using that reporter."""
        if rep not in self.reporters:
            return
        try:
            fn(*args)
        except Exception as e:  # any tracker error: a tracker must never stop training
            self.reporters.remove(rep)
            cause = terminal_text(str(e), keep_newlines=False)[:200] or type(e).__name__
            self.warn(
                f"report_to {rep.name}: {what} failed ({type(e).__name__}: {cause}); "
                f"{rep.name} gets no more metrics from this run. Training goes on, and "
                f"{METRICS_FILE} has every metric."
            )

    def _record(self, record: dict[str, Any]) -> None:
        step, metrics = int(record["step"]), series.tagged_metrics(record)
        for rep in list(self.reporters):
            if rep.live:
                self._call(rep, "log", rep.log, step, metrics)
        if any(not rep.live for rep in self.reporters):
            self._pending.append((step, metrics))

    # -- trainer events ------------------------------------------------------------------
    def on_step(self, metrics: dict[str, Any]) -> None:
        """A logged optimizer step."""
        self._record({"kind": series.TRAIN, **metrics})

    def on_eval(self, metrics: dict[str, Any]) -> None:
        """A validation pass."""
        self._record({"kind": series.EVAL, **metrics})

    def on_sample(self, step: int, text: str) -> None:
        """A text sample (live reporters only: it is not in metrics.jsonl to replay)."""
        for rep in list(self.reporters):
            if rep.live:
                self._call(rep, "log_text", rep.log_text, step, "samples", text)

    def on_checkpoint(self, step: int, path: Path) -> None:
        """Everything up to ``step`` now survives any resume: release it to every reporter."""
        ready = [(s, m) for s, m in self._pending if s <= step]
        self._pending = [(s, m) for s, m in self._pending if s > step]
        for rep in list(self.reporters):
            if not rep.live:
                for s, m in ready:
                    self._call(rep, "log", rep.log, s, m)
            self._call(rep, "flush", rep.flush)

    def on_end(self, outcome: dict[str, Any]) -> None:
        """The segment ended: ``{"status", "step", "reason"?, "error"?}`` from the trainer."""
        self._outcome = str(outcome.get("status"))
        self._write_status(run_status.mark_ended, outcome)

    def close(self) -> None:
        """Close every reporter. Records past the last checkpoint are dropped (see above)."""
        if self._outcome is None:  # no on_end: the segment ended outside fit()
            self._outcome = run_status.FAILED
            ended = {"status": run_status.FAILED, "reason": "error"}
            self._write_status(run_status.mark_ended, ended)
        for rep in list(self.reporters):
            self._call(rep, "close", rep.close, self._outcome)
        self.reporters.clear()
        self._pending.clear()


def run_tracker(
    run: RunInfo, names: list[str], warn: Callable[[str], None] | None = None
) -> RunTracker:
    """A started :class:`RunTracker` for ``run`` reporting to ``names`` (``report_to``)."""
    tracker = RunTracker(run, [make_reporter(n) for n in names], warn or _stderr_warning)
    return tracker.start()
