"""What ``llmforge runs`` shows: one summary per run, read from the run's folder alone.

A run is a folder ``runs/RUN/`` holding any of ``config.yaml``, ``metrics.jsonl`` and
``checkpoints/``. Everything is read without torch and without the run's lock (a trainer may be
appending to it): checkpoints appear by an atomic rename, metrics lines are appended whole, and
a line cut short by a kill is skipped.

"Steps done" is what the run has *kept*: the newest checkpoint's step. A running run's is the
last step it logged. For a failed run the steps after its last checkpoint are not done (a
resume computes them again), so its losses are those at or before that checkpoint too.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yaml import YAMLError

from llmforge.checkpoints.layout import (
    CHECKPOINTS,
    META_FILE,
    STATE_FILE,
    checkpoint_bytes,
    list_checkpoints,
)
from llmforge.errors import CheckpointError, LLMForgeError, WorkspaceError
from llmforge.inspecting import state
from llmforge.store.registry import ModelRegistry
from llmforge.tracking import series
from llmforge.tracking.metrics import METRICS_FILE
from llmforge.tracking.reporter import flat_hparams
from llmforge.tracking.run_status import STATUS_FILE, read_status_file
from llmforge.untrusted import UntrustedYAMLError, brief, load_yaml
from llmforge.workspace import Workspace

CONFIG_FILE = "config.yaml"

# How much of the end of metrics.jsonl ``runs list`` reads (some thousands of records).
_TAIL_BYTES = 1 << 20


@dataclass
class CheckpointRow:
    """One checkpoint of a run.

    Attributes:
        step: Its step.
        path: Its folder.
        train_loss: The training loss it recorded.
        val_loss: The validation loss it recorded.
        created: When it was written (mtime of its meta.json), seconds since the epoch.
        size: Bytes of its files.
        registered_as: Registry models made from it (``ckpt register``, ``--init-from``).
    """

    step: int
    path: Path
    train_loss: float | None
    val_loss: float | None
    created: float
    size: int = 0
    registered_as: list[str] = field(default_factory=list)


@dataclass
class RunOverview:
    """One run, as ``runs list`` and ``runs show`` report it (see the module docstring)."""

    name: str
    run_dir: Path
    status: state.RunStatus
    model: str
    parent: str | None
    lineage: list[str]
    steps_done: int
    max_steps: int | None
    last_logged_step: int | None
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    tokens_per_step: int | None
    train_time_s: float | None
    started_at: str | None
    last_activity: float
    report_to: list[str]
    config: dict[str, Any]
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    branched_from: dict[str, Any] | None = None

    @property
    def tokens_seen(self) -> int | None:
        """Tokens the kept steps consumed (padded batches count whole)."""
        return self.steps_done * self.tokens_per_step if self.tokens_per_step else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings, the status flattened)."""
        data = asdict(self)
        data.update(
            run_dir=str(self.run_dir),
            status=self.status.status,
            status_reason=self.status.reason,
            status_detail=self.status.detail,
            status_inferred=self.status.inferred,
            tokens_seen=self.tokens_seen,
        )
        for ck in data["checkpoints"]:
            ck["path"] = str(ck["path"])
        return data


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _read_yaml(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError, UntrustedYAMLError, YAMLError):
        data = load_yaml(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def is_run_dir(path: Path) -> bool:
    """Whether a folder under ``runs/`` is a run (hidden folders never are)."""
    if path.name.startswith(".") or path.is_symlink() or not path.is_dir():
        return False
    parts = (CONFIG_FILE, METRICS_FILE, CHECKPOINTS, STATUS_FILE)
    return any((path / p).exists() for p in parts)


def checkpoints_of(run_dir: Path, *, sizes: bool = False) -> list[CheckpointRow]:
    """The complete checkpoints of a run, oldest first (hidden temporaries ignored)."""
    rows = []
    with contextlib.suppress(OSError):
        for p in list_checkpoints(run_dir):
            meta = _read_json(p / META_FILE)
            row = CheckpointRow(
                int(p.name.split("-")[1]),
                p,
                _float(meta.get("train_loss")),
                _float(meta.get("val_loss")),
                (p / META_FILE).stat().st_mtime,
            )
            if sizes:
                row.size = checkpoint_bytes(p)
            rows.append(row)
    return rows


def _last_activity(run_dir: Path, ckpts: list[CheckpointRow]) -> float:
    times = [ckpts[-1].created] if ckpts else []
    for name in (METRICS_FILE, STATUS_FILE, CONFIG_FILE):
        with contextlib.suppress(OSError):
            times.append((run_dir / name).stat().st_mtime)
    return max(times, default=0.0)


def _model_label(meta: dict[str, Any], config: dict[str, Any]) -> str:
    name = meta.get("model_name") or config.get("model_name")
    arch = meta.get("architecture") or ("custom-transformer" if not name else "?")
    label = str(name) if name else f"({arch}, scratch)"
    finetune = meta.get("finetune") or config.get("finetune")
    return label + (" + LoRA" if finetune == "lora" else "")


def _best(records: list[dict[str, Any]], key: str, up_to: int | None) -> float | None:
    values = [
        v
        for r in records
        if (up_to is None or int(r["step"]) <= up_to) and (v := _float(r.get(key))) is not None
    ]
    return min(values) if values else None


def _facts(records: list[dict[str, Any]], up_to: int | None) -> dict[str, float | None]:
    """Last train loss, last validation loss, best validation loss and training time of the
    records at steps up to ``up_to`` (None: all)."""
    return {
        "loss": _float(series.last_value(records, "loss", up_to)),
        "val_loss": _float(series.last_value(records, "val_loss", up_to)),
        "best": _best(records, "val_loss", up_to),
        "elapsed": _float(series.last_value(records, "elapsed", up_to)),
    }


def _tokens_per_step(recorded: dict[str, Any], cfg: dict[str, Any], saved: dict[str, Any]) -> Any:
    """From status.json; else the config's batch x accumulation x block x processes."""
    if isinstance(recorded.get("tokens_per_step"), int):
        return recorded["tokens_per_step"]
    try:
        world = int(saved.get("world_size") or 1)
        return (
            int(cfg["batch_size"]) * int(cfg["grad_accum_steps"]) * int(cfg["block_size"]) * world
        )
    except (KeyError, TypeError, ValueError):
        return None


def summarize(
    run_dir: Path, *, detail: bool = False, registry: list[Any] | None = None
) -> RunOverview:
    """The summary of one run folder.

    Args:
        run_dir: ``runs/RUN``.
        detail: Also checkpoint sizes and registrations (``runs show``).
        registry: The registry's entries, for ``registered_as`` (with ``detail``).
    """
    ckpts = checkpoints_of(run_dir, sizes=detail)
    latest = ckpts[-1] if ckpts else None
    meta = _read_json(latest.path / META_FILE) if latest else {}
    saved = _read_json(latest.path / STATE_FILE) if latest else {}
    config = _read_yaml(run_dir / CONFIG_FILE) or dict(meta.get("config") or {})
    # A long run's metrics.jsonl is megabytes: the list reads its end, the whole if need be.
    whole = detail or series.metrics_size(run_dir) <= _TAIL_BYTES
    records = series.read_records(run_dir, None if whole else _TAIL_BYTES)
    logged = max((int(r["step"]) for r in records), default=None)
    max_steps = config.get("max_steps") if isinstance(config.get("max_steps"), int) else None
    judged = state.judge(run_dir, latest.step if latest else None, max_steps, logged)
    running = judged.status == state.RUNNING
    done = (logged or 0) if running else (latest.step if latest else 0)
    up_to = None if running else done
    facts = _facts(records, up_to)
    if not whole and (facts["loss"] is None or facts["val_loss"] is None):
        facts = _facts(series.read_records(run_dir), up_to)
    recorded = read_status_file(run_dir)
    elapsed = facts["elapsed"] if running else saved.get("elapsed")
    # best of what was kept: the checkpoint's own record, and the steps logged since (running)
    bests = [b for b in (facts["best"], _float(saved.get("best_val_loss"))) if b is not None]
    best = facts["best"] if whole and facts["best"] is not None else min(bests, default=None)
    lineage = [str(x) for x in meta.get("lineage") or []]
    if detail and registry:
        for row in ckpts:
            row.registered_as = registered_from(registry, run_dir, row.path)
    return RunOverview(
        name=run_dir.name,
        run_dir=run_dir,
        status=judged,
        model=_model_label(meta, config),
        parent=lineage[0] if lineage else None,
        lineage=lineage,
        steps_done=done,
        max_steps=max_steps,
        last_logged_step=logged,
        train_loss=facts["loss"],
        val_loss=facts["val_loss"],
        best_val_loss=best,
        tokens_per_step=_tokens_per_step(recorded, config, saved),
        train_time_s=_float(elapsed),
        started_at=meta.get("fine_tune_started_at"),
        last_activity=_last_activity(run_dir, ckpts),
        report_to=[str(x) for x in config.get("report_to") or []],
        config=config,
        checkpoints=ckpts,
        segments=[s for s in recorded.get("segments", []) if isinstance(s, dict)],
        branched_from=meta.get("branched_from"),
    )


def registered_from(entries: list[Any], run_dir: Path, ckpt: Path | None = None) -> list[str]:
    """Registry models recorded as made from ``ckpt`` (or from any checkpoint of the run).

    ``ckpt register`` and ``--init-from`` record ``details.checkpoint`` (workspace-relative, or
    absolute for older entries) and ``details.run``.
    """
    out = []
    for e in entries:
        where = str(e.details.get("checkpoint") or "")
        if not where:
            continue
        path = Path(where)
        if not path.is_absolute():
            path = run_dir.parent.parent / path  # relative to the workspace root
        with contextlib.suppress(OSError):
            path = path.resolve()
        target = (ckpt or run_dir).resolve()
        if path == target or (ckpt is None and target in path.parents):
            out.append(e.model_name)
    return sorted(out)


def registry_entries(ws: Workspace) -> list[Any]:
    """The registry's entries, or [] when there is no readable registry."""
    if not ws.registry_path.is_file():
        return []
    try:
        return ModelRegistry(ws).list()
    except LLMForgeError:
        return []


def list_runs(ws: Workspace) -> list[RunOverview]:
    """Every run of the workspace, the most recently active first."""
    root = ws.runs_dir
    if os.path.lexists(root) and not root.is_dir():
        raise WorkspaceError(
            f"{root} is a file, not a folder; llmforge keeps training runs there.",
            "Move or rename that file (llmforge creates runs/ when a run starts).",
        )
    try:
        folders = [p for p in root.iterdir() if is_run_dir(p)]
    except OSError:
        return []
    runs = [summarize(p) for p in folders]
    return sorted(runs, key=lambda s: (-s.last_activity, s.name))


def find_run(ws: Workspace, name: str) -> Path:
    """``runs/NAME``, checked to be a run.

    Raises:
        CheckpointError: No such run; the message lists the runs there are.
    """
    path = ws.runs_dir / name
    if "/" in name or name in ("", ".", "..") or not is_run_dir(path):
        names = (
            sorted(p.name for p in ws.runs_dir.iterdir() if is_run_dir(p))
            if ws.runs_dir.is_dir()
            else []
        )
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise CheckpointError(
            f"No run named {brief(name, 80)} in {ws.runs_dir}.",
            f"Runs in this workspace: {shown or 'none'} (`llmforge runs list`).",
        )
    return path


def config_diff(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """``(key, [value per run])`` for every flattened config key whose values differ."""
    flat = [flat_hparams(c) for c in configs]
    keys = sorted(set().union(*flat))
    missing = object()
    out = []
    for k in keys:
        values = [f.get(k, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out.append((k, ["-" if v is missing else v for v in values]))
    return out


def evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The run's evaluations: validation passes, and any other kind of record (the hook for
    benchmark results that later commands append to metrics.jsonl), in step order."""
    recs = [r for r in series.read_records(run_dir) if r.get("kind") != series.TRAIN]
    return sorted(recs, key=lambda r: int(r["step"]))


def workspace_relative(ws: Workspace, path: Path) -> str:
    """``path`` relative to the workspace when inside it (for messages)."""
    with contextlib.suppress(ValueError):
        return os.path.relpath(path, ws.root) if path.is_relative_to(ws.root) else str(path)
    return str(path)
