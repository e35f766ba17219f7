"""Eval records: one JSON file per evaluation, beside (never inside) what was evaluated.

Where (see NOTES.md for why not inside the checkpoint folder):

- a checkpoint ``runs/RUN/checkpoints/step-N`` -> ``runs/RUN/evals/step-N/``: outside
  ``checkpoints/``, so its ``manifest.json`` and weights are never touched and a record never
  makes it look damaged; it goes with the run when the run is moved or deleted;
- a registry model (or LoRA adapter entry) ``NAME`` -> ``models/.evals/NAME/`` (hidden, like
  ``.cache`` and ``.staging``: no model name can be hidden).

Each record names what it measured: the subject's *fingerprint* (sha256 of the checkpoint's
``manifest.json``, which lists every file's sha256, or of the registry entry's file list), so
a record of weights that were since replaced (a re-saved step, a re-imported name) shows as
stale instead of being believed. Writers never rewrite a file: each record is a new file with
a unique name, written to a hidden temporary file, fsynced and hard-linked into place
(``os.link`` fails rather than overwrite), so concurrent evals never lose each other's records
and readers never see half a record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmforge.checkpoints.manifest import MANIFEST_FILE
from llmforge.fsutil import fsync_dir
from llmforge.workspace import Workspace

FORMAT = 1
EVALS_DIR = "evals"  # in a run folder
MODEL_EVALS_DIR = ".evals"  # in models/


@dataclass(frozen=True)
class Subject:
    """What was evaluated and where its records live.

    Attributes:
        kind: ``checkpoint`` or ``model``.
        ref: How the user names it (``RUN/step-200``, a model name).
        folder: The folder holding its records.
        fingerprint: ``sha256:...`` of the weights' manifest; None when unverifiable (a
            checkpoint saved before manifests).
    """

    kind: str
    ref: str
    folder: Path
    fingerprint: str | None


def _sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def checkpoint_subject(ckpt: Path) -> Subject:
    """The subject of checkpoint folder ``runs/RUN/checkpoints/step-N``.

    Its records live in ``runs/RUN/evals/step-N/``: never inside the checkpoint, whose
    manifest would then report an added file and make every load refuse it as damaged (and a
    hidden file there would be copied by ``ckpt register`` / ``ckpt export``).
    """
    run_dir = ckpt.parent.parent
    try:
        fingerprint: str | None = _sha256_bytes((ckpt / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        fingerprint = None
    step = int(ckpt.name.split("-")[1])
    return Subject(
        "checkpoint", f"{run_dir.name}/step-{step}", run_dir / EVALS_DIR / ckpt.name, fingerprint
    )


def model_subject(models_dir: Path, name: str, files: dict[str, Any]) -> Subject:
    """The subject of registry model ``name`` whose entry records ``files``.

    Args:
        models_dir: The workspace's ``models/``.
        name: The model name (never hidden, never a path: ``registry_schema.name_problem``).
        files: The entry's ``files`` (``{name: {"size", "sha256"}}``); for a LoRA adapter
            entry, its own files (its base has records of its own).
    """
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":"), default=_plain)
    return Subject(
        "model", name, models_dir / MODEL_EVALS_DIR / name, _sha256_bytes(canonical.encode())
    )


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else str(value)


def data_source(
    path: str | Path, sha256: str, fmt: str, limit: int | None = None
) -> dict[str, Any]:
    """The ``data`` entry of a held-out record: the file, its sha256, format and limit."""
    return {
        "path": str(Path(path).expanduser().resolve()),
        "sha256": sha256,
        "format": fmt,
        "limit": limit,
    }


def hub_source(repo_id: str, revision: str, split: str, limit: int | None = None) -> dict[str, Any]:
    """The ``data`` entry for a hub dataset: its id and the resolved commit, not a branch name."""
    return {"hub": repo_id, "revision": revision, "split": split, "limit": limit}


def new_record(
    subject: Subject,
    kind: str,
    data: dict[str, Any],
    metrics: dict[str, Any],
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A record, ready for :func:`write_record`.

    Args:
        subject: What was evaluated.
        kind: ``heldout`` (``--data``) or ``harness`` (one lm-eval task).
        data: :func:`data_source`, :func:`hub_source`, or a task's provenance.
        metrics: The numbers (``loss``, ``perplexity``, ..., or ``acc``, ``acc_stderr``, ...).
        settings: What else decides the numbers (context, stride, device, dtype, few-shot, seed).
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        llmforge_version = version("llmforge")
    except PackageNotFoundError:
        llmforge_version = None
    now = datetime.now(timezone.utc)
    return {
        "format": FORMAT,
        "id": f"{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:12]}",
        "created": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "llmforge_version": llmforge_version,
        "subject": {"kind": subject.kind, "ref": subject.ref, "fingerprint": subject.fingerprint},
        "kind": kind,
        "data": data,
        "settings": settings or {},
        "metrics": metrics,
    }


def write_record(subject: Subject, record: dict[str, Any]) -> Path:
    """Write ``record`` as a new file in the subject's folder; never replaces a file.

    Returns:
        The record's path (``<id>.json``).
    """
    folder = subject.folder
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{record['id']}.json"
    fd, tmp = tempfile.mkstemp(prefix=".rec-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        _publish(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(folder)
    return final


def _publish(tmp: str, final: Path) -> None:
    """Give ``tmp`` the name ``final``: atomically, and never over an existing file.

    ``os.link`` refuses an existing name (FileExistsError, raised: a clash means a bug). On a
    filesystem without hard links, ``os.replace`` (the unique name makes a clash impossible).
    """
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError:
        os.replace(tmp, final)


def read_records(subject: Subject) -> tuple[list[dict[str, Any]], list[str]]:
    """The subject's records, oldest first, each with ``stale`` set; and unreadable files.

    ``stale``: the record's fingerprint differs from the subject's now (its weights were
    replaced), or either is unknown. Hidden files (a writer's temporary file) are skipped.
    """
    records, bad = [], []
    try:
        paths = sorted(
            p
            for p in subject.folder.iterdir()
            if p.suffix == ".json" and not p.name.startswith(".")
        )
    except FileNotFoundError:
        return [], []
    for p in paths:
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            fingerprint = rec["subject"]["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            bad.append(p.name)
            continue
        rec["stale"] = fingerprint is None or fingerprint != subject.fingerprint
        records.append(rec)
    return sorted(records, key=lambda r: r["id"]), bad


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest current (not stale) record per (kind, data, settings).

    What ``ckpt info``, ``ckpt list`` and ``models info`` show.
    """
    newest: dict[str, dict[str, Any]] = {}
    for rec in records:
        if not rec.get("stale"):
            key = json.dumps([rec["kind"], rec["data"], rec["settings"]], sort_keys=True)
            newest[key] = rec
    return sorted(newest.values(), key=lambda r: r["id"])


def heldout_record(
    subject: Subject, result: Any, data_file: Any, settings: dict[str, Any], limit: int | None
) -> dict[str, Any]:
    """The record of a held-out loss (a ``HeldoutResult`` of a ``DataFile``)."""
    data = data_source(data_file.source, data_file.sha256, data_file.format, limit)
    return new_record(subject, "heldout", data, result.row(), settings)


def harness_record(subject: Subject, result: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The record of one lm-eval task (a ``TaskResult``); ``settings``: limit, seed, ..."""
    metrics = {
        **result.metrics,
        "samples": result.samples,
        "samples_total": result.samples_total,
    }
    settings = {**settings, "num_fewshot": result.num_fewshot, "task_version": result.version}
    return new_record(subject, "harness", result.source, metrics, settings)


def subject_of(workspace: Workspace, target: str) -> Subject:
    """The subject a TARGET names (a checkpoint reference or a registry model name).

    Raises:
        CheckpointError: If ``target`` is neither (the message ``generate`` gives).
    """
    from llmforge.inference.model_source import find_source

    found = find_source(workspace, target)
    if found.checkpoint is not None:
        return checkpoint_subject(found.checkpoint)
    assert found.entry is not None
    return model_subject(workspace.models_dir, found.entry.model_name, found.entry.files)


def eval_records(workspace: Workspace, target: str) -> list[dict[str, Any]]:
    """The current eval records of a checkpoint or model, newest per measurement.

    What ``ckpt info`` and ``models info`` show (and a run's listing can): see :func:`latest`.

    Raises:
        CheckpointError: If ``target`` names neither a checkpoint nor a registered model.
    """
    records, _ = read_records(subject_of(workspace, target))
    return latest(records)


def run_eval_records(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """``{"step-000200": [records...]}`` of every checkpoint of a run that has records.

    Records of a step whose checkpoint was pruned stay (marked ``stale``: the fingerprint
    cannot be checked any more); those of a step that exists are checked against it.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    evals = run_dir / EVALS_DIR
    if not evals.is_dir():
        return out
    for folder in sorted(p for p in evals.iterdir() if p.is_dir()):
        ckpt = run_dir / "checkpoints" / folder.name
        if ckpt.is_dir():
            subject = checkpoint_subject(ckpt)
        else:
            subject = Subject("checkpoint", f"{run_dir.name}/{folder.name}", folder, None)
        records, _ = read_records(subject)
        if records:
            out[folder.name] = records
    return out
