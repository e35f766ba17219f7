"""Gathering a hub repository into an import's staging folder.

The architecture, size and license are checked before any weights are taken, every file is
verified against the hub's checksums, pickled weights are converted to safetensors, and the
entry to register is returned. Registering (the atomic rename and the registry write) is
:func:`llmforge.store.commit.commit_staged`'s job.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

from llmforge.errors import InvalidSourceError
from llmforge.fsutil import human_bytes
from llmforge.importing import file_selection, hub
from llmforge.importing.gather import Candidate, check_selection, consent, finish, is_pickled
from llmforge.importing.licensing import MAX_READ_BYTES, LicenseInfo, license_info
from llmforge.importing.model_check import MAX_CONFIG_BYTES, parse_config
from llmforge.importing.plan import (
    ImportHooks,
    ImportRequest,
    ImportResult,
    check_architecture,
    checksum_error,
)
from llmforge.importing.source import Source
from llmforge.importing.undo import ImportWork
from llmforge.store import blobs
from llmforge.store.registry import FileRecord
from llmforge.workspace import Workspace, resolve_inside


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
    cache = blobs.hub_cache_dir(ws)
    revision = req.revision or source.revision
    snap = hub.fetch_snapshot(repo, revision, req.token, cache)
    sel = file_selection.select_files(snap.files)
    check_selection(sel, f"The repository {repo!r}")
    config, info = _read_before_consent(snap, sel, cache, req.token)
    arch = check_architecture(config, f"The model {repo!r}")
    cand = Candidate(repo, snap.sha, "huggingface", arch, sel, config, info, f"{repo!r}")
    missing = sum(f.size for f in sel.files if hub.cached_path(cache, snap, f.path) is None)
    staging, accepted_at = consent(
        ws, req, name, work, hooks, cand, download_bytes=missing, new_bytes=missing
    )
    local, hashes, downloaded, reused = _download(snap, sel, cache, req.token, hooks)
    hub.remember_ref(cache, repo, revision, snap.sha)
    records = {
        p: FileRecord(size=path.stat().st_size, sha256=hashes[p])
        for p, path in local.items()
        if not is_pickled(p, sel)
    }
    for p in records:
        blobs.link_or_copy(local[p], resolve_inside(staging, p))
    pickled = {p: path for p, path in local.items() if is_pickled(p, sel)}
    details = {"requested_revision": revision or "default branch"}
    entry = finish(ws, name, cand, staging, records, pickled, accepted_at, hooks, details)
    return ImportResult(entry, downloaded_files=downloaded, reused_files=reused)


def _download(
    snap: hub.RepoSnapshot,
    sel: file_selection.FileSelection,
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
    snap: hub.RepoSnapshot, sel: file_selection.FileSelection, cache: Path, token: str | None
) -> tuple[dict[str, Any], LicenseInfo]:
    """config.json and the license information, read into memory (nothing written).

    A file already in the cache is read from there (no request); otherwise config.json is
    fetched whole (it must be under ``MAX_CONFIG_BYTES``) and checked against the hub's
    checksum, and only the first ``MAX_READ_BYTES`` of the card and of one license file are.
    """
    repo = snap.repo_id

    def start(f: file_selection.RemoteFile, limit: int) -> bytes:
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
    lic = next((by_name[p] for p in sorted(by_name) if file_selection.is_license_file(p)), None)

    def text(f: file_selection.RemoteFile | None) -> str | None:
        return start(f, MAX_READ_BYTES).decode("utf-8", errors="replace") if f else None

    info = license_info(text(card), lic.path if lic else None, text(lic), snap.card_data)
    return parse_config(data, f"{repo!r}"), info


def _verify_bytes(f: file_selection.RemoteFile, data: bytes) -> None:
    sha256 = hashlib.sha256(data).hexdigest()
    git = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    if f.sha256 and sha256 != f.sha256:
        raise checksum_error(f.path, f.sha256, sha256, "sha256")
    if not f.sha256 and f.blob_id and git != f.blob_id:
        raise checksum_error(f.path, f.blob_id, git, "git blob sha1")


def _verify_download(f: file_selection.RemoteFile, path: Path) -> str:
    """Check a downloaded file against the hub's checksum; return its sha256.

    A mismatching file is removed from the cache at once (the rest of the refused import is
    taken back by :func:`llmforge.importing.undo.leave_no_trace`).
    """
    sha256, git_sha1 = blobs.hash_file(path)
    bad = None
    if f.sha256 and sha256 != f.sha256:
        bad = checksum_error(f.path, f.sha256, sha256, "sha256")
    elif not f.sha256 and f.blob_id and git_sha1 != f.blob_id:
        bad = checksum_error(f.path, f.blob_id, git_sha1, "git blob sha1")
    if bad is not None:
        blob = path.resolve()
        blobs.discard(path)
        blobs.discard(blob)
        raise bad
    return sha256
