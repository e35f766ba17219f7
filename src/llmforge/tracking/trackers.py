"""trackio, wandb and MLflow reporters: one tracker run per llmforge run, resumed by its id.

None of these trackers can take back a step (wandb ignores a step not larger than its last;
MLflow and trackio keep every value logged at a step), so they are not ``live``: the
:class:`~llmforge.tracking.reporting.RunTracker` gives them records once a checkpoint covers
them. The tracker's run id is kept in ``runs/RUN/tracking.json`` so that a resume appends to
the same tracker run. Local-first defaults, each overridden by the tracker's own variables:

- trackio: its local SQLite store (``TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``),
  project ``llmforge`` (``LLMFORGE_TRACKIO_PROJECT``); ``trackio show`` opens the dashboard.
- wandb: ``mode=offline`` (``WANDB_MODE=online`` streams), files in ``runs/RUN/wandb/``
  (``wandb sync`` uploads them later), project ``llmforge`` (``WANDB_PROJECT``), no console
  capture and no system metrics (they would wrap the progress bar's stdout).
- MLflow: ``MLFLOW_TRACKING_URI``, else ``sqlite:///WORKSPACE/mlflow.db`` (MLflow 3's own
  default store, which needs the full ``mlflow``: ``mlflow-skinny`` has no SQLAlchemy; a
  ``file:`` URI needs ``MLFLOW_ALLOW_FILE_STORE=true`` since MLflow 3;
  ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` in the workspace),
  experiment ``llmforge`` (``MLFLOW_EXPERIMENT_NAME``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from llmforge.fsutil import atomic_write_json
from llmforge.tracking.reporter import Reporter, RunInfo

TRACKING_FILE = "tracking.json"
_CLEAN_END = ("finished", "stopped")


def _identity(run_dir: Path, tracker: str) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((run_dir / TRACKING_FILE).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get(tracker), dict):
            return data[tracker]
    return {}


def _save_identity(run_dir: Path, tracker: str, ident: dict[str, Any]) -> None:
    path = run_dir / TRACKING_FILE
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.read_text(encoding="utf-8"))
        data = loaded if isinstance(loaded, dict) else {}
    data[tracker] = ident
    atomic_write_json(path, data)


@contextlib.contextmanager
def _quiet() -> Any:
    """Keep a tracker's chatter ("* Created new run") off the training log's stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class TrackioReporter(Reporter):
    """trackio (Hugging Face's local-first tracker): one trackio run named after the run."""

    name = "trackio"

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, run: RunInfo, hparams: dict[str, Any]) -> None:
        import trackio

        project = os.environ.get("LLMFORGE_TRACKIO_PROJECT") or "llmforge"
        known = _identity(run.run_dir, self.name)
        self.fresh = not known
        with _quiet():
            self.run = trackio.init(
                project=known.get("project", project),
                name=run.run_name,
                config=hparams,
                resume="allow" if known else "never",
                embed=False,
                auto_log_gpu=False,
                auto_log_cpu=False,
            )
        _save_identity(run.run_dir, self.name, {"project": known.get("project", project)})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def flush(self) -> None:
        """Write the queued logs to the SQLite store now (at each checkpoint).

        ``Run.log`` only queues; trackio's thread writes the queue every few seconds and at
        ``finish``, so a killed run would lose every step since. trackio (0.43) has no public
        flush: this is what its local thread does, under the same lock.
        """
        flush = getattr(self.run, "_flush_queues_inline", None)
        lock = getattr(self.run, "_client_lock", None)
        if flush is not None and lock is not None:
            with lock:
                flush()

    def close(self, outcome: str | None) -> None:
        if self.run is not None:
            with _quiet():
                self.run.finish()
            self.run = None


class WandbReporter(Reporter):
    """Weights & Biases, offline unless ``WANDB_MODE`` says otherwise."""

    name = "wandb"

    def __init__(self) -> None:
        self.run: Any = None
        self.run_dir: Path | None = None

    def start(self, run: RunInfo, hparams: dict[str, Any]) -> None:
        import wandb

        known = _identity(run.run_dir, self.name)
        # A segment that was killed never reached ``finish``: wandb-core had not written its
        # records (the offline file holds only its header), so the resume replays
        # metrics.jsonl up to the resumed step. Online, wandb drops the steps it already has
        # (not larger than its last), which are the same values.
        self.fresh = not known.get("finished")
        run_id = known.get("id") or secrets.token_hex(4)  # wandb ids: [a-z0-9]
        self.run_dir = run.run_dir
        _save_identity(run.run_dir, self.name, {"id": run_id})  # before init: a kill keeps it
        settings = wandb.Settings(console="off", x_disable_stats=True, silent=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "llmforge",
            name=run.run_name,
            id=run_id,
            dir=str(run.run_dir),
            mode=os.environ.get("WANDB_MODE") or "offline",
            config=run.hparams,  # nested: wandb shows sections
            resume="allow",
            settings=settings,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        # Train and eval records of one step arrive one after the other: wandb merges them
        # into the step's row, which it commits when a larger step comes.
        self.run.log(metrics, step=step)

    def close(self, outcome: str | None) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if outcome in _CLEAN_END else 1)
            if self.run_dir is not None:
                _save_identity(self.run_dir, self.name, {"id": self.run.id, "finished": True})
            self.run = None


class MlflowReporter(Reporter):
    """MLflow through ``MlflowClient`` (no global active run: it cannot clash with the user's)."""

    name = "mlflow"
    _BATCH = 1000  # MLflow's limit of metrics per log_batch call

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run: RunInfo, hparams: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        known = _identity(run.run_dir, self.name)
        self.fresh = not known
        uri = os.environ.get("MLFLOW_TRACKING_URI") or known.get("tracking_uri")
        uri = uri or f"sqlite:///{run.workspace_root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        if known.get("run_id"):
            self.run_id = str(known["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "llmforge"
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            tags = {"llmforge.run": run.run_name, "llmforge.workspace": str(run.workspace_root)}
            self.run_id = self.client.create_run(
                exp_id, run_name=run.run_name, tags=tags
            ).info.run_id
        _save_identity(run.run_dir, self.name, {"run_id": self.run_id, "tracking_uri": uri})
        self._log_params(hparams)

    def _log_params(self, hparams: dict[str, Any]) -> None:
        """Params are write-once in MLflow: a resume that changed one records it as a tag."""
        from mlflow.entities import Param, RunTag

        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in hparams.items() if k not in have]
        changed = [
            RunTag(f"llmforge.resumed_with.{k}", str(v)[:5000])
            for k, v in hparams.items()
            if k in have and have[k] != str(v)[:6000]
        ]
        for i in range(0, len(new), 100):  # MLflow's limit of params per call
            self.client.log_batch(self.run_id, params=new[i : i + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(points), self._BATCH):
            self.client.log_batch(self.run_id, metrics=points[i : i + self._BATCH])

    def close(self, outcome: str | None) -> None:
        if self.client is not None and self.run_id is not None:
            state = "FINISHED" if outcome in _CLEAN_END else "FAILED"
            self.client.set_terminated(self.run_id, state)
            self.client = None
