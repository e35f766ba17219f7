"""``ckpt list`` and ``ckpt info``: the checkpoints of the workspace and what one holds; all of
them compared with their manifests (``models validate``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmforge.checkpoints import manifest
from llmforge.checkpoints.layout import (
    CHECKPOINTS,
    META_FILE,
    check_complete,
    checkpoint_bytes,
    checkpoint_dirs,
    list_checkpoints,
)
from llmforge.checkpoints.metadata import load_meta, load_state
from llmforge.checkpoints.references import resolve_checkpoint, workspace_relative
from llmforge.errors import CheckpointError, WorkspaceError
from llmforge.store.registry import ModelRegistry
from llmforge.workspace import Workspace


@dataclass
class CheckpointSummary:
    """One row of ``llmforge ckpt list``.

    Attributes:
        path: The checkpoint directory.
        run: The run it belongs to.
        step: Optimizer steps done.
        meta: Its ``meta.json`` (empty when unreadable).
        created: When it was written (the mtime of ``meta.json``, which is written last).
        size: Bytes on disk.
    """

    path: Path
    run: str
    step: int
    meta: dict[str, Any]
    created: datetime
    size: int


@dataclass
class CheckpointInfo:
    """What ``llmforge ckpt info`` shows.

    Attributes:
        summary: The list row.
        state: ``trainer_state.json`` facts (step, best validation loss, losses recorded).
        registered_as: Registry models made from this checkpoint.
        files: Relative file names with sizes.
        integrity: What comparing it with its manifest found (sizes and small files).
    """

    summary: CheckpointSummary
    state: dict[str, Any]
    registered_as: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    integrity: str = ""


def _summary(path: Path) -> CheckpointSummary:
    try:
        meta = load_meta(path)
    except CheckpointError:
        meta = {}
    mtime = (path / META_FILE).stat().st_mtime if (path / META_FILE).exists() else 0.0
    return CheckpointSummary(
        path=path,
        run=path.parent.parent.name,
        step=int(path.name.split("-")[1]),
        meta=meta,
        created=datetime.fromtimestamp(mtime, timezone.utc).replace(microsecond=0),
        size=checkpoint_bytes(path),
    )


def list_all(ws: Workspace, run: str | None = None) -> list[CheckpointSummary]:
    """Every complete checkpoint under ``runs/`` (or of one run), by run then step.

    Raises:
        CheckpointError: If ``run`` is given and no such run exists.
    """
    runs_dir = ws.runs_dir
    if os.path.lexists(runs_dir) and not runs_dir.is_dir():
        raise WorkspaceError(
            f"{runs_dir} is a file, not a folder; llmforge keeps training runs and their "
            "checkpoints there.",
            "Move or rename that file (llmforge creates runs/ when a run starts).",
        )
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if run is not None:
        if not (runs_dir / run / CHECKPOINTS).is_dir():
            names = ", ".join(p.name for p in runs) or "none"
            raise CheckpointError(
                f"No run named {run!r} in {runs_dir}.", f"Runs in this workspace: {names}."
            )
        runs = [runs_dir / run]
    return [_summary(p) for r in runs for p in list_checkpoints(r)]


def checkpoint_info(ws: Workspace, ref: str) -> CheckpointInfo:
    """Metadata, trainer state, files and registrations of one checkpoint.

    Raises:
        CheckpointError: If ``ref`` matches no complete checkpoint.
    """
    path = resolve_checkpoint(ws, ref)
    check_complete(path)
    summary = _summary(path)
    if not summary.meta:
        load_meta(path)  # raises the precise error
    raw = load_state(path)  # checked: a damaged trainer_state.json is one clear error
    state = {
        "step": raw.get("step"),
        "best_val_loss": raw.get("best_val_loss"),
        "losses_recorded": len(raw.get("losses", [])),
        "elapsed_s": round(float(raw.get("elapsed", 0.0)), 1),
    }
    registered = [
        e.model_name
        for e in ModelRegistry(ws).list()
        if e.details.get("checkpoint") in (str(path), workspace_relative(ws, path))
    ]
    files = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
    integrity = manifest.check_manifest(path).status  # check_complete refused damage
    return CheckpointInfo(summary, state, registered, files, integrity)


def validate_checkpoints(workspace: Workspace) -> list[manifest.ManifestCheck]:
    """Compare every checkpoint under ``runs/`` with its manifest, sha256 of every file.

    Checkpoints saved before manifests existed are reported as unverified (``has_manifest``
    False), not as failures.
    """
    return [manifest.check_manifest(p, full=True) for p in checkpoint_dirs(workspace.runs_dir)]
