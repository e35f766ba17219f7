"""store/commit.py in-process: a staged folder becomes a model, or a model goes, all or nothing.

The kills at each step are in ``tests/reliability/test_store_safety.py`` (subprocesses); here
the same paths run in the test process, so a failure at the registry write and a name taken
at commit time (a race the CLI's early check cannot see) are pinned exactly.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from helpers import make_model, snapshot
from llmforge.errors import ModelExistsError, ModelNotFoundError, RegistryError
from llmforge.store import blobs
from llmforge.store.commit import commit_staged, remove_model
from llmforge.store.registry import ModelEntry, ModelRegistry
from llmforge.workspace import Workspace

NEW = {"w.bin": b"new weights"}
OLD = {"w.bin": b"old weights", "extra.txt": b"x"}


def _staged(ws: Workspace, name: str) -> tuple[ModelEntry, Path]:
    staging = blobs.new_staging_dir(ws, name)
    for rel, data in NEW.items():
        (staging / rel).write_bytes(data)
    entry = ModelEntry(
        model_name=name, source="local", architecture="custom-transformer", local_path=name
    )
    return entry, staging


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _fail_registry_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)).name == "registry.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_a_staged_folder_becomes_the_model(workspace: Workspace) -> None:
    make_model(workspace, "other")
    entry, staging = _staged(workspace, "m")
    assert commit_staged(workspace, ModelRegistry(workspace), entry, staging, False) is False
    assert _files(workspace.models_dir / "m") == NEW and not staging.exists()
    assert ModelRegistry(workspace).names() == ["m", "other"]
    assert not (workspace.models_dir / ".trash").exists()


def test_a_name_taken_at_commit_time_is_refused_and_changes_nothing(workspace: Workspace) -> None:
    make_model(workspace, "m", files=OLD)
    make_model(workspace, "m-2")
    entry, staging = _staged(workspace, "m")
    before = snapshot(workspace.root)
    with pytest.raises(ModelExistsError) as info:
        commit_staged(workspace, ModelRegistry(workspace), entry, staging, False)
    assert info.value.message == "A model named 'm' is already in the registry."
    assert "--name m-3" in info.value.hint  # a name free among all the registered ones
    assert snapshot(workspace.root) == before


def test_force_replaces_the_model_and_removes_the_old_folder(workspace: Workspace) -> None:
    make_model(workspace, "m", files=OLD)
    entry, staging = _staged(workspace, "m")
    assert commit_staged(workspace, ModelRegistry(workspace), entry, staging, True) is True
    assert _files(workspace.models_dir / "m") == NEW
    assert ModelRegistry(workspace).get("m").files == {}
    assert not (workspace.models_dir / ".trash").exists()


def test_a_failed_registry_write_puts_the_old_model_back(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_model(workspace, "m", files=OLD)
    entry, staging = _staged(workspace, "m")
    _fail_registry_write(monkeypatch)
    with pytest.raises(RegistryError, match="No space left on device"):
        commit_staged(workspace, ModelRegistry(workspace), entry, staging, True)
    monkeypatch.undo()
    assert _files(workspace.models_dir / "m") == OLD
    assert ModelRegistry(workspace).get("m") == old
    ModelRegistry(workspace).settle()  # nothing half done is left for the next command
    assert _files(workspace.models_dir / "m") == OLD
    assert sorted(p.name for p in workspace.models_dir.iterdir() if p.is_dir()) == [".staging", "m"]
    assert _files(staging) == NEW  # moved back: the import's own clean-up removes it


def test_remove_takes_the_entry_and_the_folder(workspace: Workspace) -> None:
    make_model(workspace, "keep")
    make_model(workspace, "m", files=OLD)
    entry, freed = remove_model(workspace, "m")
    assert entry.model_name == "m" and freed == sum(len(b) for b in OLD.values())
    assert ModelRegistry(workspace).names() == ["keep"]
    assert not (workspace.models_dir / "m").exists()
    assert not (workspace.models_dir / ".trash").exists()


def test_remove_of_an_unknown_model_names_the_closest(workspace: Workspace) -> None:
    make_model(workspace, "tiny-qwen")
    before = snapshot(workspace.root)
    with pytest.raises(ModelNotFoundError) as info:
        remove_model(workspace, "tiny-qwn")
    assert info.value.message == "No model named 'tiny-qwn' is in the registry."
    assert info.value.hint == "Did you mean 'tiny-qwen'? Available models: tiny-qwen."
    assert snapshot(workspace.root) == before


def test_remove_refused_by_its_check_or_a_failed_write_keeps_the_model(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model(workspace, "m", files=OLD)
    before = snapshot(workspace.root)
    seen: list[list[str]] = []

    def refuse(models: dict[str, ModelEntry]) -> None:
        seen.append(sorted(models))
        raise ModelExistsError("in use", None)

    with pytest.raises(ModelExistsError):
        remove_model(workspace, "m", check=refuse)
    assert seen == [["m"]] and snapshot(workspace.root) == before
    _fail_registry_write(monkeypatch)
    with pytest.raises(RegistryError):
        remove_model(workspace, "m")
    monkeypatch.undo()
    assert _files(workspace.models_dir / "m") == OLD and ModelRegistry(workspace).names() == ["m"]
