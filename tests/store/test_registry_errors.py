"""The registry's refusals, word for word, and its lock and write faults, in-process.

Every refusal of a damaged ``registry.json`` must name the problem, say what to do and leave
the file byte-identical; a lock that cannot be taken and a write that fails change nothing.
These pin the exact texts (a user reads them when their data is at stake) so the mutation
session (``nox -s mutation``) sees every changed word.
"""

from __future__ import annotations

import errno
import json
import os
import time

import pytest
from filelock import FileLock

from helpers import make_model
from llmforge.errors import (
    ModelExistsError,
    ModelNotFoundError,
    RegistryCorruptError,
    RegistryError,
    WorkspaceError,
)
from llmforge.store import registry as reg
from llmforge.store.registry import ModelRegistry, free_name, name_taken_error, not_found_error
from llmforge.workspace import Workspace

FIX = (
    "llmforge will not overwrite it. Restore it from git (`git checkout -- "
    "models/registry.json`) or a backup, or fix it by hand; models/README.md describes the format."
)


def _entry(name: str, **extra: object) -> dict:
    return {
        "model_name": name,
        "source": "local",
        "architecture": "qwen2",
        "local_path": name,
        **extra,
    }


def _corrupt(ws: Workspace, text: str) -> RegistryCorruptError:
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    ws.registry_path.write_text(text)
    with pytest.raises(RegistryCorruptError) as info:
        ModelRegistry(ws).list()
    # and a change is refused before it writes
    with pytest.raises(RegistryCorruptError), ModelRegistry(ws).transaction():
        pass
    assert ws.registry_path.read_text() == text
    return info.value


def test_a_model_named_twice(workspace: Workspace) -> None:
    one = json.dumps(_entry("a"))
    e = _corrupt(workspace, f'{{"schema_version": 1, "models": {{"a": {one}, "a": {one}}}}}')
    assert e.message == (
        f"{workspace.registry_path} names the model 'a' twice; loading it would silently keep "
        "only the last one, so llmforge will not read or overwrite it."
    )
    assert e.hint == (
        "Open the file, keep the one copy you want (compare them with `git diff`) and delete the "
        "other, or restore the file from git (`git checkout -- models/registry.json`)."
    )
    assert e.__cause__ is None and e.__suppress_context__


def test_a_key_named_twice(workspace: Workspace) -> None:
    e = _corrupt(workspace, '{"schema_version": 1, "schema_version": 1, "models": {}}')
    assert e.message.startswith(f"{workspace.registry_path} names the key 'schema_version' twice;")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not valid JSON ('Expecting property name enclosed in double quotes: line 1 "),
        ("\udcff", "is not valid JSON ("),
        ("[]", "does not hold a JSON object."),
        ('{"schema_version": 2, "models": {}}', "has schema_version 2; this llmforge reads "),
        ('{"models": {}}', "has schema_version None; this llmforge reads version 1."),
    ],
)
def test_a_registry_that_is_not_one(workspace: Workspace, text: str, message: str) -> None:
    if text == "\udcff":
        workspace.models_dir.mkdir(parents=True)
        workspace.registry_path.write_bytes(b"\xff{}")
        with pytest.raises(RegistryCorruptError) as info:
            ModelRegistry(workspace).list()
        e = info.value
    else:
        e = _corrupt(workspace, text)
    assert e.message.startswith(f"{workspace.registry_path} {message}"), e.message
    assert e.hint is not None and e.hint.endswith(FIX)
    if "schema_version" in message:
        assert e.hint == "Use the llmforge version that wrote it, or restore the file. " + FIX


def test_an_invalid_entry_names_where(workspace: Workspace) -> None:
    bad = _entry("a", architecture=5)
    e = _corrupt(workspace, json.dumps({"schema_version": 1, "models": {"a": bad}}))
    assert e.message.startswith(f"{workspace.registry_path} has an invalid entry at 'models.a.")
    assert e.message.endswith(" (1 problem(s) in all).") and e.hint == FIX
    assert e.__cause__ is not None


def test_an_entry_under_another_name(workspace: Workspace) -> None:
    e = _corrupt(workspace, json.dumps({"schema_version": 1, "models": {"b": _entry("a")}}))
    assert e.message == (f"{workspace.registry_path}: the entry stored under 'b' is named 'a'.")
    assert e.hint == FIX


def test_models_that_is_a_file(workspace: Workspace) -> None:
    workspace.models_dir.write_text("not a folder")
    for action in (ModelRegistry(workspace).list, ModelRegistry(workspace).check_writable):
        with pytest.raises(WorkspaceError) as info:
            action()
        assert info.value.message == (
            f"{workspace.models_dir} is a file, not a folder; llmforge keeps registry.json and "
            "the model folders there."
        )
        assert info.value.hint == (
            "Move or rename that file, then run the command again (llmforge creates models/ "
            "when it needs it)."
        )
    assert workspace.models_dir.read_text() == "not a folder"


def test_a_registry_that_cannot_be_read(workspace: Workspace) -> None:
    workspace.registry_path.mkdir(parents=True)
    with pytest.raises(RegistryError) as info:
        ModelRegistry(workspace).list()
    assert info.value.message == f"Cannot read {workspace.registry_path}: Is a directory."


def test_a_lock_that_is_a_folder(workspace: Workspace) -> None:
    lock = workspace.models_dir / ".registry.lock"
    lock.mkdir(parents=True)
    expected = (
        f"The registry lock {lock} is a folder, so the registry cannot be changed safely; "
        "nothing was changed."
    )
    hint = (
        "It holds no data: remove it (`rm -r models/.registry.lock`) if no llmforge command is "
        "running, then run the command again."
    )
    with pytest.raises(RegistryError) as info:
        ModelRegistry(workspace).check_writable()
    assert (info.value.message, info.value.hint) == (expected, hint)
    with pytest.raises(RegistryError) as info:
        ModelRegistry(workspace).add(reg.ModelEntry.model_validate(_entry("a")))
    assert (info.value.message, info.value.hint) == (expected, hint)
    assert not workspace.registry_path.exists()


def test_a_lock_held_too_long(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace.models_dir.mkdir()
    monkeypatch.setattr(reg, "LOCK_TIMEOUT_S", 0.2)
    holder = FileLock(str(workspace.models_dir / ".registry.lock"))
    holder.acquire()
    try:
        start = time.monotonic()
        with pytest.raises(RegistryError) as info:
            ModelRegistry(workspace).add(reg.ModelEntry.model_validate(_entry("a")))
        assert time.monotonic() - start >= 0.2  # it did wait its timeout
    finally:
        holder.release()
    assert info.value.message == (
        "Another llmforge process has held the registry lock "
        f"{workspace.models_dir / '.registry.lock'} for over 0 s."
    )
    assert info.value.hint == "Wait for it to finish; if none is running, delete the lock file."
    assert not workspace.registry_path.exists()


def test_a_failed_write_changes_nothing_and_runs_the_undo_steps(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model(workspace, "keep")
    before = workspace.registry_path.read_bytes()
    undone: list[str] = []

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    registry = ModelRegistry(workspace)
    with pytest.raises(RegistryError) as info, registry.transaction() as models:
        registry.undo_on_failure(lambda: undone.append("first"))
        registry.undo_on_failure(lambda: undone.append("second"))
        models["new"] = reg.ModelEntry.model_validate(_entry("new"))
    assert info.value.message == (
        f"Could not write {workspace.registry_path}: No space left on device. The registry and "
        "the model folders are unchanged."
    )
    assert info.value.hint == (
        "Free some disk space (or raise the file-size limit) and run the command again."
    )
    assert undone == ["second", "first"]  # in reverse, under the lock
    assert workspace.registry_path.read_bytes() == before
    assert registry.digest is None and registry._undo is None


def test_an_unchanged_transaction_does_not_rewrite(workspace: Workspace) -> None:
    make_model(workspace, "keep")
    inode = workspace.registry_path.stat().st_ino
    registry = ModelRegistry(workspace)
    with registry.transaction() as models:
        assert sorted(models) == ["keep"] and registry.digest is not None
    assert workspace.registry_path.stat().st_ino == inode
    with pytest.raises(AssertionError, match="outside a transaction"):
        registry.undo_on_failure(lambda: None)


def test_entries_are_written_sorted(workspace: Workspace) -> None:
    for name in ("b", "c", "a"):
        make_model(workspace, name)
    names = list(json.loads(workspace.registry_path.read_text())["models"])
    assert names == ["a", "b", "c"]
    assert ModelRegistry(workspace).remove("b").model_name == "b"
    assert ModelRegistry(workspace).names() == ["a", "c"]


def test_trash_is_tidied_when_empty_and_the_lock_is_free(workspace: Workspace) -> None:
    registry = ModelRegistry(workspace)
    registry.tidy_trash()  # no trash: nothing to do
    trash = workspace.models_dir / ".trash"
    trash.mkdir(parents=True)
    (trash / "x").write_text("journal")
    registry.tidy_trash()
    assert trash.is_dir()  # not empty: kept
    (trash / "x").unlink()
    holder = FileLock(str(workspace.models_dir / ".registry.lock"))
    with holder:
        registry.tidy_trash()
        assert trash.is_dir()  # the lock is held: left to the next transaction
    registry.tidy_trash()
    assert not trash.exists()


def test_not_found_lists_the_names_and_the_closest() -> None:
    e = not_found_error("tiny-qwn", ["base", "tiny-qwen"])
    assert isinstance(e, ModelNotFoundError)
    assert e.message == "No model named 'tiny-qwn' is in the registry."
    assert e.hint == "Did you mean 'tiny-qwen'? Available models: base, tiny-qwen."
    assert not_found_error("zzzz", ["base", "tiny-qwen"]).hint == (
        "Available models: base, tiny-qwen."
    )
    assert not_found_error("x", []).hint == (
        "The registry is empty: import a model with `llmforge models import HUB_ID`."
    )
    long = "tiny-qwen" * 100  # too long to compare: no suggestion, a short message
    e = not_found_error(long, ["tiny-qwen"])
    assert e.hint == "Available models: tiny-qwen." and len(e.message) < 200


def test_a_name_taken_suggests_a_free_one() -> None:
    e = name_taken_error("tiny", {"tiny-2"})
    assert isinstance(e, ModelExistsError)
    assert e.message == "A model named 'tiny' is already in the registry."
    assert e.hint == (
        "Choose another name with --name (e.g. --name tiny-3), or pass --force to replace it."
    )
    assert "--name tiny-2" in name_taken_error("tiny").hint


def test_free_name_counts_up_and_stays_short_and_valid() -> None:
    assert free_name("Org/Tiny", set()) == "tiny"
    assert free_name("Org/Tiny", {"tiny", "tiny-2", "tiny-3"}) == "tiny-4"
    long = "a" * reg.MAX_NAME_LENGTH
    assert free_name(long, {long}) == "a" * (reg.MAX_NAME_LENGTH - 2) + "-2"
    taken = {long} | {"a" * (reg.MAX_NAME_LENGTH - 2) + f"-{n}" for n in range(2, 10)}
    assert free_name(long, taken) == "a" * (reg.MAX_NAME_LENGTH - 3) + "-10"


def test_lineage_stops_at_a_cycle(workspace: Workspace) -> None:
    make_model(workspace, "a", fine_tuned_from="b")
    make_model(workspace, "b", fine_tuned_from="a")
    assert ModelRegistry(workspace).lineage("a") == ["b"]
    assert ModelRegistry(workspace).lineage("b") == ["a"]
