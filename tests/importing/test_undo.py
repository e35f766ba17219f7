"""importing/undo.py in-process: an import staged with the real blob store, failing after it
wrote cache entries (a hub download's blob, snapshot link and ref; a local file adopted into
the blob store). A refusal leaves ``models/`` as it was, a failure a retry follows keeps the
verified downloads, and nothing a model links to (or another import may use) is removed. The
whole imports from a hub are in tests/reliability/test_import_*.py."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest

from helpers import snapshot
from llmforge.errors import HubUnreachableError, InsufficientDiskError, RepoChangedError
from llmforge.importing.undo import leave_no_trace
from llmforge.store import blobs
from llmforge.workspace import Workspace

REPO = "models--org--tiny"


class Refused(Exception):
    """A refusal in the middle of an import (a checksum mismatch, say)."""


def _stage(ws: Workspace, work, fail: BaseException | None) -> dict[str, Path]:
    """What an import writes before it fails with ``fail``: its staging folder, a local file
    adopted into the blob store, and a hub download (blob, snapshot link, ref)."""
    staging = work.begin()
    (staging / "config.json").write_text("{}")
    local = staging / "local.bin"
    local.write_bytes(b"local weights")
    digest = blobs.adopt(ws, local, staging / "model.safetensors", move=True)
    repo = blobs.hub_cache_dir(ws) / REPO
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(b"downloaded weights")
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to("../../blobs/abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("rev1")
    written = {
        "staging": staging,
        "blob": blobs.blob_dir(ws) / digest,
        "hub_blob": repo / "blobs" / "abc123",
        "snapshot_link": snap / "model.safetensors",
    }
    if fail is not None:
        raise fail
    return written


def _earlier_import(ws: Workspace) -> Path:
    """A model imported before (its cache lock file stays): its file linked to a blob."""
    folder = ws.models_dir / "old"
    with leave_no_trace(ws, "old") as work:
        src = work.begin() / "old.bin"
        src.write_bytes(b"old weights")
        folder.mkdir()
        blobs.adopt(ws, src, folder / "model.safetensors", move=True)
    return folder / "model.safetensors"


@pytest.mark.parametrize("earlier", [False, True])
def test_a_refused_import_leaves_models_byte_identical(tmp_path: Path, earlier: bool) -> None:
    ws = Workspace(tmp_path)
    old = _earlier_import(ws) if earlier else None
    before = snapshot(ws.models_dir)
    with pytest.raises(Refused), leave_no_trace(ws, "tiny") as work:
        _stage(ws, work, Refused())
    assert snapshot(ws.models_dir) == before
    if old is not None:
        assert old.read_bytes() == b"old weights"


@pytest.mark.parametrize(
    "fail",
    [KeyboardInterrupt(), HubUnreachableError("gone"), RepoChangedError("moved")],
    ids=["ctrl-c", "unreachable", "repo-changed"],
)
def test_a_failure_a_retry_follows_keeps_the_downloaded_files(
    tmp_path: Path, fail: BaseException
) -> None:
    ws = Workspace(tmp_path)
    seen: dict[str, Path] = {}
    with pytest.raises(type(fail)), leave_no_trace(ws, "tiny") as work:
        seen.update(_stage(ws, work, None))
        raise fail
    assert not seen["staging"].exists()
    assert seen["hub_blob"].read_bytes() == b"downloaded weights"
    assert seen["snapshot_link"].read_bytes() == b"downloaded weights"
    assert seen["blob"].read_bytes() == b"local weights"


def test_a_file_a_model_now_links_to_is_not_taken_back(tmp_path: Path) -> None:
    """Another import committed a model using this import's new blob (a hard link), and a
    snapshot link points to a blob a model uses: both stay, the rest goes."""
    ws = Workspace(tmp_path)
    seen: dict[str, Path] = {}
    other = ws.models_dir / "other"
    with pytest.raises(Refused), leave_no_trace(ws, "tiny") as work:
        seen.update(_stage(ws, work, None))
        other.mkdir()
        os.link(seen["blob"], other / "model.safetensors")
        os.link(seen["hub_blob"], other / "downloaded.safetensors")
        (ws.models_dir / blobs.CACHE / "stray").mkdir()  # an empty new folder: removed
        raise Refused()
    assert seen["blob"].read_bytes() == b"local weights"
    assert seen["hub_blob"].read_bytes() == b"downloaded weights"
    assert os.readlink(seen["snapshot_link"]) == "../../blobs/abc123"
    assert not seen["staging"].exists()
    assert not (ws.models_dir / blobs.CACHE / "stray").exists()
    assert not (blobs.hub_cache_dir(ws) / REPO / "refs" / "main").exists()


def test_nothing_is_taken_back_while_another_import_holds_the_cache(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    seen: dict[str, Path] = {}
    with contextlib.ExitStack() as other_import:
        with pytest.raises(Refused), leave_no_trace(ws, "tiny") as work:
            seen.update(_stage(ws, work, None))
            other_import.enter_context(blobs.cache_in_use(ws))
            raise Refused()
        # it may be using a blob this import fetched: the next prune removes what is unused
        assert seen["blob"].is_file() and seen["hub_blob"].is_file()
        assert (blobs.hub_cache_dir(ws) / REPO / "refs" / "main").is_file()
    assert not seen["staging"].exists()


def test_a_successful_import_keeps_its_cache_entries_and_drops_its_staging(
    tmp_path: Path,
) -> None:
    ws = Workspace(tmp_path)
    with leave_no_trace(ws, "tiny") as work:
        seen = _stage(ws, work, None)
        assert work.begin() == seen["staging"]  # one staging folder per import
        # named after the model and this process: a leftover tells whose it was, and the
        # next import removes it once that process is gone
        assert seen["staging"].name.startswith(f"tiny.{os.getpid()}.")
    assert not seen["staging"].exists()
    assert seen["blob"].is_file() and seen["hub_blob"].is_file()


def test_a_refusal_before_consent_writes_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with pytest.raises(Refused), leave_no_trace(ws, "tiny") as work:
        assert work.staging is None
        raise Refused()
    assert not ws.models_dir.exists()


def test_a_full_disk_is_one_clear_error_and_nothing_stays(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(InsufficientDiskError) as info, leave_no_trace(ws, "tiny") as work:
        _stage(ws, work, full)
    assert info.value.message == (
        "The disk ran out of space while importing 'tiny' (No space left on device); nothing "
        "was imported and the partial files were removed."
    )
    assert info.value.hint == (
        "Free some space (e.g. `llmforge models delete NAME`) or use a workspace on "
        "another disk (--home / LLMFORGE_HOME), then retry."
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert snapshot(ws.models_dir) == {}


def test_another_os_error_passes_through_unchanged(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    denied = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(PermissionError) as info, leave_no_trace(ws, "tiny") as work:
        _stage(ws, work, denied)
    assert info.value is denied
    assert snapshot(ws.models_dir) == {}
