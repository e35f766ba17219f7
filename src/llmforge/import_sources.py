"""The two ways an import gathers files into its staging folder: from the hub, from a folder.

Both check the architecture, size and license before taking any weights, verify every file,
convert pickled weights to safetensors, and return the entry to register. Registering (the
atomic rename and the registry write) is :func:`llmforge.importer.commit_staged`'s job.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

from llmforge import hub, repofiles, store
from llmforge.errors import InvalidSourceError
from llmforge.fsutil import human_bytes
from llmforge.hubsource import Source
from llmforge.import_undo import ImportWork
from llmforge.importer import (
    ImportHooks,
    ImportPlan,
    ImportRequest,
    ImportResult,
    accept_license,
    check_architecture,
    check_size,
    checksum_error,
    read_config,
)
from llmforge.licensing import MAX_READ_BYTES, LicenseInfo, license_info, read_license
from llmforge.modelcheck import MAX_CONFIG_BYTES, check_model_files, parse_config
from llmforge.registry import FileRecord, ModelEntry
from llmforge.weights import convert_pickled, count_parameters
from llmforge.workspace import Workspace, resolve_inside


def _check_selection(sel: repofiles.FileSelection, where: str) -> None:
    names = {f.path for f in sel.files}
    if "config.json" not in names:
        raise InvalidSourceError(
            f"{where} has no config.json, so it is not a model in Hugging Face format.",
            "Import a transformers model repository or folder (config.json, weights, tokenizer).",
        )
    if not sel.pickled_weights and not any(n.endswith(".safetensors") for n in names):
        raise InvalidSourceError(
            f"{where} has no weights llmforge can use (*.safetensors, or pytorch_model*.bin).",
            "GGUF, ONNX and other runtime formats are not imported; pick the original "
            "transformers repository.",
        )


def _is_pickled(name: str, sel: repofiles.FileSelection) -> bool:
    return sel.pickled_weights and (name.endswith(".bin") or name.endswith(".bin.index.json"))


def gather_from_hub(
    ws: Workspace,
    source: Source,
    req: ImportRequest,
    name: str,
    work: ImportWork,
    hooks: ImportHooks,
) -> ImportResult:
    """Resolve, check, download and verify a hub repository into the import's staging folder.

    Before the user consents nothing is written: config.json (bounded, verified), the start of
    the model card and of one license file are read into memory. The free-space check and the
    license prompt come next; only then is anything downloaded into the cache.

    Returns:
        The result holding the entry to register.
    """
    assert source.repo_id is not None
    repo = source.repo_id
    cache = store.hub_cache_dir(ws)
    revision = req.revision or source.revision
    snap = hub.fetch_snapshot(repo, revision, req.token, cache)
    sel = repofiles.select_files(snap.files)
    _check_selection(sel, f"The repository {repo!r}")
    config, info = _read_before_consent(snap, sel, cache, req.token)
    arch = check_architecture(config, f"The model {repo!r}")
    missing = sum(f.size for f in sel.files if hub.cached_path(cache, snap, f.path) is None)
    pickled_bytes = sum(f.size for f in sel.files if _is_pickled(f.path, sel))
    plan = ImportPlan(
        name,
        repo,
        snap.sha,
        arch,
        [(f.path, f.size) for f in sel.files],
        sel.skipped,
        sel.total_bytes,
        missing,
        info,
        unsafe=sel.unsafe,
        convert=sel.pickled_weights,
        progress_files=len(sel.files),
        progress_bytes=sel.total_bytes,
    )
    hooks.on_plan(plan)
    check_size(sel.total_bytes, missing + pickled_bytes, ws.models_dir, hooks)
    accepted_at = accept_license(info, req, hooks, name)
    staging = work.begin()  # the first write of this import
    local, hashes, downloaded, reused = _download(snap, sel, cache, req.token, hooks)
    hub.remember_ref(cache, repo, revision, snap.sha)

    records = {
        p: FileRecord(size=path.stat().st_size, sha256=hashes[p])
        for p, path in local.items()
        if not _is_pickled(p, sel)
    }
    for p in records:
        store.link_or_copy(local[p], resolve_inside(staging, p))
    pickled = {p: path for p, path in local.items() if _is_pickled(p, sel)}
    records.update(_convert(ws, pickled, staging, hooks))
    check_model_files(staging, config, f"{repo!r}")
    entry = _entry(
        name,
        repo,
        snap.sha,
        "huggingface",
        arch,
        staging,
        records,
        info.label,
        accepted_at,
        {"requested_revision": revision or "default branch"}
        | ({"converted_from": sorted(pickled)} if pickled else {}),
    )
    return ImportResult(entry, downloaded_files=downloaded, reused_files=reused)


def _download(
    snap: hub.RepoSnapshot,
    sel: repofiles.FileSelection,
    cache: Path,
    token: str | None,
    hooks: ImportHooks,
) -> tuple[dict[str, Path], dict[str, str], list[str], list[str]]:
    """Download (or find in the cache) and verify every selected file.

    Returns:
        ``(local paths, sha256 of each, names downloaded now, names already cached)``.
    """
    local: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    downloaded: list[str] = []
    reused: list[str] = []
    for f in sel.files:
        was_cached = hub.cached_path(cache, snap, f.path) is not None
        hooks.on_file_start(f.path, f.size)
        path = hub.download_file(snap, f.path, cache, token, hooks.on_bytes)
        (reused if was_cached else downloaded).append(f.path)
        hashes[f.path] = _verify_download(f, path)
        local[f.path] = path
        hooks.on_file_done(f.path, not was_cached)
    return local, hashes, downloaded, reused


def _read_before_consent(
    snap: hub.RepoSnapshot, sel: repofiles.FileSelection, cache: Path, token: str | None
) -> tuple[dict[str, Any], LicenseInfo]:
    """config.json and the license information, read into memory (nothing written).

    A file already in the cache is read from there (no request); otherwise config.json is
    fetched whole (it must be under ``MAX_CONFIG_BYTES``) and checked against the hub's
    checksum, and only the first ``MAX_READ_BYTES`` of the card and of one license file are.
    """
    repo = snap.repo_id

    def start(f: repofiles.RemoteFile, limit: int) -> bytes:
        cached = hub.cached_path(cache, snap, f.path)
        if cached is not None:
            # (pruned by a concurrent delete since it was found: ask the hub instead)
            with contextlib.suppress(FileNotFoundError), open(cached, "rb") as fh:
                return fh.read(limit)
        return hub.read_remote_start(snap, f.path, token, limit) if f.size else b""

    by_name = {f.path: f for f in sel.files}
    cfg = by_name["config.json"]
    if cfg.size > MAX_CONFIG_BYTES:
        raise InvalidSourceError(
            f"The config.json of {repo!r} is {human_bytes(cfg.size)}; a model config is a few "
            "kilobytes, so this repository is not one llmforge imports.",
            "Import another revision or repository.",
        )
    data = start(cfg, MAX_CONFIG_BYTES)
    _verify_bytes(cfg, data)
    card = by_name.get("README.md")
    lic = next((by_name[p] for p in sorted(by_name) if repofiles.is_license_file(p)), None)

    def text(f: repofiles.RemoteFile | None) -> str | None:
        return start(f, MAX_READ_BYTES).decode("utf-8", errors="replace") if f else None

    info = license_info(text(card), lic.path if lic else None, text(lic), snap.card_data)
    return parse_config(data, f"{repo!r}"), info


def _verify_bytes(f: repofiles.RemoteFile, data: bytes) -> None:
    sha256 = hashlib.sha256(data).hexdigest()
    git = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    if f.sha256 and sha256 != f.sha256:
        raise checksum_error(f.path, f.sha256, sha256, "sha256")
    if not f.sha256 and f.blob_id and git != f.blob_id:
        raise checksum_error(f.path, f.blob_id, git, "git blob sha1")


def _verify_download(f: repofiles.RemoteFile, path: Path) -> str:
    """Check a downloaded file against the hub's checksum; return its sha256.

    A mismatching file is removed from the cache at once (the rest of the refused import is
    taken back by :func:`llmforge.import_undo.leave_no_trace`).
    """
    sha256, git_sha1 = store.hash_file(path)
    bad = None
    if f.sha256 and sha256 != f.sha256:
        bad = checksum_error(f.path, f.sha256, sha256, "sha256")
    elif not f.sha256 and f.blob_id and git_sha1 != f.blob_id:
        bad = checksum_error(f.path, f.blob_id, git_sha1, "git blob sha1")
    if bad is not None:
        blob = path.resolve()
        store.discard(path)
        store.discard(blob)
        raise bad
    return sha256


def gather_from_folder(
    ws: Workspace,
    source: Source,
    req: ImportRequest,
    name: str,
    work: ImportWork,
    hooks: ImportHooks,
) -> ImportResult:
    """Check and copy a local Hugging Face format folder into the import's staging folder.

    Returns:
        The result holding the entry to register.
    """
    folder = source.path
    assert folder is not None
    if req.revision:
        raise InvalidSourceError(
            "--revision applies to hub repositories, not to a local folder.",
            "Leave out --revision, or import from the hub.",
        )
    files = [
        repofiles.RemoteFile(path=p.name, size=p.stat().st_size)
        for p in sorted(folder.iterdir())
        if p.is_file()
    ]
    sel = repofiles.select_files(files)
    _check_selection(sel, f"The folder {folder}")
    config = read_config(folder / "config.json", str(folder))
    arch = check_architecture(config, f"The folder {folder}")
    lic_files = sorted(f.path for f in sel.files if repofiles.is_license_file(f.path))
    readme = folder / "README.md"
    info = read_license(
        readme if readme.is_file() else None, folder / lic_files[0] if lic_files else None
    )
    pickled_bytes = sum(f.size for f in sel.files if _is_pickled(f.path, sel))
    plan = ImportPlan(
        name,
        str(folder),
        None,
        arch,
        [(f.path, f.size) for f in sel.files],
        sel.skipped,
        sel.total_bytes,
        0,
        info,
        unsafe=sel.unsafe,
        convert=sel.pickled_weights,
        progress_files=len(sel.files),
        progress_bytes=sel.total_bytes,
    )
    hooks.on_plan(plan)
    check_size(sel.total_bytes, sel.total_bytes + pickled_bytes, ws.models_dir, hooks)
    accepted_at = accept_license(info, req, hooks, name)
    staging = work.begin()  # the first write of this import
    records: dict[str, FileRecord] = {}
    pickled: dict[str, Path] = {}
    for f in sel.files:
        hooks.on_file_start(f.path, f.size)
        if _is_pickled(f.path, sel):
            pickled[f.path] = folder / f.path
        else:
            digest = store.adopt(ws, folder / f.path, resolve_inside(staging, f.path))
            records[f.path] = FileRecord(size=f.size, sha256=digest)
        hooks.on_bytes(f.size)
        hooks.on_file_done(f.path, False)
    records.update(_convert(ws, pickled, staging, hooks))
    check_model_files(staging, config, str(folder))
    entry = _entry(
        name,
        str(folder),
        None,
        "local",
        arch,
        staging,
        records,
        info.label,
        accepted_at,
        {"converted_from": sorted(pickled)} if pickled else {},
    )
    return ImportResult(entry)


def _convert(
    ws: Workspace, pickled: dict[str, Path], staging: Path, hooks: ImportHooks
) -> dict[str, FileRecord]:
    """Convert pickled weights to safetensors in the blob store, linked into ``staging``."""
    if not pickled:
        return {}
    hooks.on_step("Converting pickled weights to safetensors (loaded with weights_only=True)")
    work = staging / ".convert"
    work.mkdir()
    records = {}
    for out in convert_pickled(pickled, work):
        digest = store.adopt(ws, work / out, staging / out, move=True)
        records[out] = FileRecord(size=(staging / out).stat().st_size, sha256=digest)
    store.discard(work)
    return records


def _entry(
    name: str,
    model_id: str,
    revision: str | None,
    source: str,
    arch: str,
    staging: Path,
    records: dict[str, FileRecord],
    license_label: str,
    accepted_at: object,
    details: dict[str, object],
) -> ModelEntry:
    weights = [staging / n for n in sorted(records) if n.endswith(".safetensors")]
    return ModelEntry(
        model_name=name,
        model_id=model_id,
        revision=revision,
        source=source,  # type: ignore[arg-type]
        architecture=arch,
        local_path=name,
        files=records,
        num_parameters=count_parameters(weights),
        disk_bytes=sum(r.size for r in records.values()),
        license=license_label,
        license_accepted_at=accepted_at,  # type: ignore[arg-type]
        tokenizer="native",
        details=details,
    )
