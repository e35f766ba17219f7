"""store/folder_change.py in-process: what the next command does with a change a kill cut short.

A process killed inside a registry transaction leaves a journal in ``models/.trash/`` and the
folders as they were at that instant. The kill tests (``tests/reliability/test_store_safety.py``)
do this to a real ``llmforge`` in a subprocess; here each instant is left deterministically by
running :class:`FolderChange`'s steps up to it (and writing ``registry.json`` when the kill came
after the commit point), then the next command's settle runs in the test process. Each case
checks what the user is left with: the model whole and registered, or gone, never half.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import make_model, snapshot
from llmforge.errors import RegistryError
from llmforge.store import blobs
from llmforge.store.commit import remove_model
from llmforge.store.folder_change import FolderChange, registry_digest
from llmforge.store.registry import ModelEntry, ModelRegistry
from llmforge.workspace import Workspace

OLD = {"w.bin": b"old weights", "sub/extra.txt": b"x"}
NEW = {"w.bin": b"new weights"}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _digest(ws: Workspace) -> str:
    return registry_digest(ws.registry_path.read_bytes())


def _rewrite_registry(ws: Workspace, name: str, entry: ModelEntry | None) -> None:
    """What the killed process's registry write (the commit point) left: ``name`` set or gone."""
    data = json.loads(ws.registry_path.read_text())
    if entry is None:
        data["models"].pop(name)
    else:
        data["models"][name] = entry.model_dump(mode="json")
    ws.registry_path.write_text(json.dumps(data))


def _staged(ws: Workspace, name: str) -> Path:
    staging = blobs.new_staging_dir(ws, name)
    for rel, data in NEW.items():
        (staging / rel).write_bytes(data)
    return staging


def _new_entry(name: str) -> ModelEntry:
    return ModelEntry(
        model_name=name, source="local", architecture="custom-transformer", local_path=name
    )


def _models_without_staging(ws: Workspace) -> dict[str, str]:
    return {k: v for k, v in snapshot(ws.models_dir).items() if not k.startswith(".staging")}


# A delete of "m" killed at each instant: (steps done, whether registry.json was written).
DELETE_KILLS = {
    "after the journal": (False, False),
    "after the folder went to the trash": (True, False),
    "after the registry write": (True, True),
}


@pytest.mark.parametrize("instant", list(DELETE_KILLS))
def test_a_delete_killed_at_any_instant_is_settled_to_whole_or_gone(
    workspace: Workspace, instant: str
) -> None:
    make_model(workspace, "keep")
    make_model(workspace, "m", files=OLD)
    before = snapshot(workspace.models_dir)
    moved, committed = DELETE_KILLS[instant]
    change = FolderChange(workspace, "m", _digest(workspace), moves_in=False)
    if moved:
        assert change.move_old_aside() is True
    if committed:
        _rewrite_registry(workspace, "m", None)
    ModelRegistry(workspace).settle()  # what the next command does first, under the lock
    trash = workspace.models_dir / ".trash"
    assert not trash.exists(), sorted(p.name for p in trash.iterdir())
    if committed:  # deleted: no entry, no folder, no bytes left in the trash
        assert ModelRegistry(workspace).names() == ["keep"]
        assert not (workspace.models_dir / "m").exists()
    else:  # not deleted: byte for byte as before, registry included
        assert snapshot(workspace.models_dir) == before
        assert _files(workspace.models_dir / "m") == OLD


# An import of "m" (over an existing "m" when forced) killed at each instant:
# (force, folder moved aside, staging moved in, registry written).
IMPORT_KILLS = {
    "new name, after the journal": (False, False, False, False),
    "new name, after the move in": (False, False, True, False),
    "new name, after the registry write": (False, False, True, True),
    "force, after the journal": (True, False, False, False),
    "force, after the old folder went to the trash": (True, True, False, False),
    "force, after the move in": (True, True, True, False),
    "force, after the registry write": (True, True, True, True),
}


@pytest.mark.parametrize("instant", list(IMPORT_KILLS))
def test_an_import_killed_at_any_instant_leaves_the_old_model_or_the_new_one(
    workspace: Workspace, instant: str
) -> None:
    force, aside, moved_in, committed = IMPORT_KILLS[instant]
    make_model(workspace, "keep")
    if force:
        make_model(workspace, "m", files=OLD)
    staging = _staged(workspace, "m")
    before = _models_without_staging(workspace)
    change = FolderChange(workspace, "m", _digest(workspace), moves_in=True)
    if aside:
        assert change.move_old_aside() is True
    if moved_in:
        change.move_in(staging)
    if committed:
        _rewrite_registry(workspace, "m", _new_entry("m"))
    ModelRegistry(workspace).settle()
    trash = workspace.models_dir / ".trash"
    assert not trash.exists(), sorted(p.name for p in trash.iterdir())
    if committed:  # imported: the new folder under its entry, the old one's bytes gone
        assert ModelRegistry(workspace).names() == ["keep", "m"]
        assert _files(workspace.models_dir / "m") == NEW
    else:  # not imported: models/ as before (the old "m" whole, or no "m" at all)
        assert _models_without_staging(workspace) == before
        if force:
            assert _files(workspace.models_dir / "m") == OLD


def test_the_settle_runs_before_a_command_reads_the_registry(workspace: Workspace) -> None:
    make_model(workspace, "m", files=OLD)
    change = FolderChange(workspace, "m", _digest(workspace), moves_in=False)
    change.move_old_aside()  # killed here: the entry is there, its folder in the trash
    make_model(workspace, "other")  # any later registry change settles first
    assert ModelRegistry(workspace).names() == ["m", "other"]
    assert _files(workspace.models_dir / "m") == OLD
    assert not (workspace.models_dir / ".trash").exists()


@pytest.mark.parametrize(
    "journal",
    [
        "{not json",
        '["m", "absent", true, false]',
        '{"name": "m", "registry_before": "absent", "replaces": true}',
        '{"registry_before": "absent", "replaces": true, "moves_in": false}',
        '{"name": "m", "replaces": true, "moves_in": false}',
        '{"name": "m", "registry_before": "absent", "moves_in": false}',
    ],
    ids=["not-json", "a-list", "no-moves_in", "no-name", "no-registry_before", "no-replaces"],
)
def test_an_unreadable_journal_is_a_clear_error_and_deletes_nothing(
    workspace: Workspace, journal: str
) -> None:
    make_model(workspace, "keep")
    make_model(workspace, "m", files=OLD)
    change = FolderChange(workspace, "m", _digest(workspace), moves_in=False)
    change.move_old_aside()
    change.journal.write_text(journal)  # damaged after the kill
    before = snapshot(workspace.root)
    with pytest.raises(RegistryError) as info:
        ModelRegistry(workspace).settle()
    assert info.value.message == (
        f"{change.journal} records an interrupted change of a model folder but cannot be read."
    )
    assert str(change.journal.parent) in info.value.hint and "by hand" in info.value.hint
    assert snapshot(workspace.root) == before  # the folder moved aside is still there
    assert _files(change.old) == OLD


def test_an_undo_that_cannot_move_the_folder_back_keeps_it_and_says_where(
    workspace: Workspace,
) -> None:
    make_model(workspace, "m", files=OLD)
    change = FolderChange(workspace, "m", _digest(workspace), moves_in=False)
    change.move_old_aside()
    (workspace.models_dir / "m").mkdir()  # something took the name since: the rename fails
    (workspace.models_dir / "m" / "mine.txt").write_text("not llmforge's")
    with pytest.raises(RegistryError) as info:
        ModelRegistry(workspace).settle()
    assert info.value.message.startswith("Cannot undo the interrupted change of models/m (")
    assert f"the folder it moved aside is {change.old}." in info.value.message
    assert str(workspace.models_dir / "m") in info.value.hint
    assert str(change.journal) in info.value.hint
    assert _files(change.old) == OLD and change.journal.is_file()  # nothing deleted
    assert _files(workspace.models_dir / "m") == {"mine.txt": b"not llmforge's"}


def test_what_no_journal_names_is_removed_but_never_what_a_link_points_to(
    workspace: Workspace, tmp_path: Path
) -> None:
    make_model(workspace, "m", files=OLD)
    before = snapshot(workspace.models_dir)
    trash = workspace.models_dir / ".trash"
    trash.mkdir()
    # A deletion cut short after its journal went, and a journal's own temporary file.
    (trash / "gone.123.abcd1234.old" / "sub").mkdir(parents=True)
    (trash / "gone.123.abcd1234.old" / "sub" / "w.bin").write_bytes(b"x" * 100)
    (trash / ".gone.123.abcd1234.json.k2j3.tmp").write_text('{"name": "gone"}')
    users = tmp_path / "users-folder"
    users.mkdir()
    (users / "precious.txt").write_text("keep me")
    (trash / "odd.1.ff.old").symlink_to(users, target_is_directory=True)
    ModelRegistry(workspace).settle()
    assert not trash.exists()
    assert snapshot(workspace.models_dir) == before
    assert (users / "precious.txt").read_text() == "keep me"


def test_a_journal_and_its_folder_are_settled_together_with_leftovers_beside_them(
    workspace: Workspace,
) -> None:
    make_model(workspace, "m", files=OLD)
    change = FolderChange(workspace, "m", _digest(workspace), moves_in=False)
    change.move_old_aside()
    # a leftover whose name sorts before the journal's folder
    (change.journal.parent / "a.1.ff.old").mkdir()
    ModelRegistry(workspace).settle()
    assert _files(workspace.models_dir / "m") == OLD  # the journal's folder went back, not away
    assert not (workspace.models_dir / ".trash").exists()


def test_a_journal_that_cannot_be_written_changes_nothing(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model(workspace, "m", files=OLD)
    before = snapshot(workspace.root)
    real = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)).parent.name == ".trash":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(RegistryError) as info:
        FolderChange(workspace, "m", _digest(workspace), moves_in=False)
    monkeypatch.undo()
    trash = workspace.models_dir / ".trash"
    assert info.value.message.startswith(f"Cannot record the change of models/m in {trash} (")
    assert info.value.message.endswith("nothing was changed.")
    assert "No space left on device" in info.value.message
    assert str(trash) in info.value.hint
    assert snapshot(workspace.root) == before  # no empty .trash left either


def test_a_trash_that_is_a_file_is_a_clear_error_and_stays(workspace: Workspace) -> None:
    make_model(workspace, "m", files=OLD)
    (workspace.models_dir / ".trash").write_text("a user's file")
    before = snapshot(workspace.root)
    with pytest.raises(RegistryError) as info:
        FolderChange(workspace, "m", _digest(workspace), moves_in=False)
    assert info.value.message.endswith("nothing was changed.")
    assert snapshot(workspace.root) == before


def test_a_folder_that_cannot_be_moved_aside_is_reported_and_kept(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model(workspace, "m", files=OLD)
    before = snapshot(workspace.root)
    target, real = workspace.models_dir / "m", os.rename

    def rename(src: object, dst: object) -> None:
        if Path(str(src)) == target:
            raise OSError(errno.EBUSY, "Device or resource busy")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError) as info:
        remove_model(workspace, "m")
    monkeypatch.undo()
    assert info.value.errno == errno.EBUSY  # the real cause, not one from the undo
    assert snapshot(workspace.root) == before  # entry, folder, and no journal left


# Python's audit hooks cannot be removed: one hook for the file, armed per test.
_AT_RMTREE: list[Callable[[Path], None]] = []


def _on_rmtree(event: str, args: tuple) -> None:
    if event == "shutil.rmtree" and _AT_RMTREE:
        _AT_RMTREE.pop()(Path(args[0]))


sys.addaudithook(_on_rmtree)


@pytest.mark.parametrize("first", ["the next command's settle", "the change's own finish"])
def test_a_committed_change_cleaned_up_by_two_processes_at_once_ends_clean(
    workspace: Workspace, first: str
) -> None:
    """After its registry write a delete drops the old folder without the lock, while the next
    command's settle may drop the same folder and journal: whichever is second must not fail
    on what the first already removed."""
    make_model(workspace, "keep")
    make_model(workspace, "m", files=OLD)
    change = FolderChange(workspace, "m", _digest(workspace), moves_in=False)
    change.move_old_aside()
    _rewrite_registry(workspace, "m", None)  # committed
    registry = ModelRegistry(workspace)
    if first == "the next command's settle":
        _AT_RMTREE.append(lambda _: registry.settle())  # wins the race at the change's rmtree
        change.finish()
    else:
        _AT_RMTREE.append(lambda _: change.finish())  # wins the race at the settle's rmtree
        registry.settle()
    assert not _AT_RMTREE  # the race did happen
    assert ModelRegistry(workspace).names() == ["keep"]
    assert not (workspace.models_dir / "m").exists()
    registry.tidy_trash()
    assert not (workspace.models_dir / ".trash").exists()
