"""The model store under attack: hand-edited registries, kills and races, odd filesystems,
hostile text. Nothing a user has is lost, and every refusal is one clear paragraph.

Kills and races are made deterministic with a Python audit hook in a small launcher: the real
``llmforge`` command runs in a subprocess and is SIGKILLed (or paused) exactly when it is
about to rename, delete or write a given path (``tests/store_helpers.py``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import kill_at
import pytest

from helpers import make_model, snapshot
from llmforge.store.registry import ModelRegistry
from llmforge.workspace import Workspace
from store_helpers import (
    MODEL_FILES,
    PAUSER,
    cli_env,
    entry_json,
    llmforge,
    refused,
    visible,
    write_registry,
)


def killed_at(home: Path, event: str, arg: int, needle: str, *args: str):
    """``llmforge --home HOME ARGS`` SIGKILLed at the first EVENT whose argument ARG holds NEEDLE
    (before the operation: the rename or delete does not happen)."""
    return kill_at.run(home, event, re.escape(needle), *args, arg=arg, env=cli_env())


# -- 1. an entry's folder is models/<its own name>; reserved names are refused everywhere -------
@pytest.mark.parametrize("local_path", ["registry.json", ".cache", ".staging", "keep", "."])
def test_an_entry_pointing_at_the_workspace_files_is_refused_not_deleted(
    workspace: Workspace, local_path: str
) -> None:
    make_model(workspace, "keep")
    (workspace.models_dir / ".cache" / "blobs").mkdir(parents=True)
    (workspace.models_dir / ".cache" / "blobs" / "abc").write_bytes(b"blob")
    (workspace.models_dir / ".staging").mkdir()
    data = json.loads(workspace.registry_path.read_text())
    data["models"]["evil"] = entry_json("evil", local_path=local_path)
    workspace.registry_path.write_text(json.dumps(data))
    before = snapshot(workspace.root)
    for args in (("delete", "evil", "--yes"), ("validate", "evil"), ("info", "evil")):
        res = llmforge(workspace.root, "models", *args)
        refused(res, "models.evil", "local_path must be the model's own name 'evil'", code=3)
        assert snapshot(workspace.root) == before  # registry.json and the cache are intact


RESERVED = ["registry.json", "readme.md", "registry.lock", "x.tmp", "y.incomplete"]


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_names_are_refused_by_import_before_anything_is_written(
    workspace: Workspace, tiny_qwen_repo: Path, name: str
) -> None:
    make_model(workspace, "keep")
    before = snapshot(workspace.root)
    res = llmforge(
        workspace.root, "models", "import", str(tiny_qwen_repo), "--name", name, "--accept-license"
    )
    refused(res, "is not a valid model name", "reserved", code=2)
    assert snapshot(workspace.root) == before


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_names_are_refused_by_register_and_init_from(
    scratch_ws: Workspace, name: str
) -> None:
    cfg = str(scratch_ws.root.parent / "scratch.yaml")
    before = snapshot(scratch_ws.root)
    for args in (
        ("ckpt", "register", "scratch", "--name", name),
        ("train", cfg, "--init-from", "scratch", "--name", name),
        ("train", cfg, "--init-from", "scratch", "--name", name, "--run-name", "branch"),
    ):
        res = llmforge(scratch_ws.root, *args)
        refused(res, "is not a valid model name", "reserved", code=2)
        assert snapshot(scratch_ws.root) == before, args


# -- 2. delete is all-or-nothing under the lock; a kill anywhere leaves nothing behind ---------


def _settled(ws: Workspace) -> None:
    """The next command that takes the registry lock settles what a kill left."""
    res = llmforge(ws.root, "models", "validate")
    assert res.exit_code == 0, res.output
    assert not (ws.models_dir / ".trash").exists()
    assert not (ws.models_dir / ".staging").exists() or not any(
        (ws.models_dir / ".staging").iterdir()
    )


@pytest.mark.parametrize(
    ("event", "arg", "needle", "survives"),
    [
        ("os.rename", 0, "models/victim", True),  # about to move the folder aside
        ("os.rename", 1, "registry.json", True),  # folder moved aside, registry not yet written
        ("shutil.rmtree", 0, "victim", False),  # committed, the folder not yet deleted
        ("os.remove", 0, "w2.bin", False),  # committed, half the folder deleted
    ],
)
def test_a_kill_at_any_step_of_delete_leaves_the_model_whole_or_gone(
    workspace: Workspace, event: str, arg: int, needle: str, survives: bool
) -> None:
    make_model(workspace, "keep")
    make_model(workspace, "victim", files=MODEL_FILES)
    res = killed_at(workspace.root, event, arg, needle, "models", "delete", "victim", "--yes")
    assert res.returncode == -9, res.stdout + res.stderr  # the kill point was reached
    _settled(workspace)
    assert ModelRegistry(workspace).names() == (["keep", "victim"] if survives else ["keep"])
    assert visible(workspace.models_dir) == ModelRegistry(workspace).names()


def test_a_kill_before_the_registry_write_of_an_import_force_keeps_the_old_model(
    workspace: Workspace, tiny_qwen_repo: Path
) -> None:
    old = make_model(workspace, "m", files=MODEL_FILES)
    args = ("models", "import", str(tiny_qwen_repo), "--name", "m", "--force", "--accept-license")
    res = killed_at(workspace.root, "os.rename", 1, "registry.json", *args)
    assert res.returncode == -9, res.stdout + res.stderr
    _settled(workspace)  # the old folder is back under its entry, the new one discarded
    assert ModelRegistry(workspace).get("m").files == old.files
    assert visible(workspace.models_dir) == ["m"]


@pytest.mark.parametrize(
    ("event", "arg", "needle", "registered"),
    [
        ("os.rename", 1, "registry.json", False),  # new folder in place, entry not written
        ("shutil.rmtree", 0, ".trash", True),  # committed, the replaced folder not yet deleted
    ],
)
def test_a_kill_during_ckpt_register_leaves_no_unregistered_folder(
    scratch_ws: Workspace, event: str, arg: int, needle: str, registered: bool
) -> None:
    make_model(scratch_ws, "reg", files=MODEL_FILES)  # replaced with --force
    args = ("ckpt", "register", "scratch", "--name", "reg", "--force")
    res = killed_at(scratch_ws.root, event, arg, needle, *args)
    assert res.returncode == -9, res.stdout + res.stderr
    _settled(scratch_ws)
    entry = ModelRegistry(scratch_ws).get("reg")
    assert (entry.source == "fine-tune") is registered
    assert visible(scratch_ws.models_dir) == ["reg"]


def test_delete_racing_an_import_force_of_the_same_name_keeps_the_new_model(
    workspace: Workspace, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    imp = ("models", "import", str(tiny_qwen_repo), "--name", "m", "--accept-license")
    assert llmforge(workspace.root, *imp).exit_code == 0
    marker, go = tmp_path / "paused", tmp_path / "go"
    cmd = [sys.executable, "-c", PAUSER, str(marker), str(go), "--home", str(workspace.root)]
    delete = subprocess.Popen(
        [*cmd, "models", "delete", "m", "--yes"],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(6000):  # the delete released the lock and is about to remove files
            if marker.exists() or delete.poll() is not None:
                break
            time.sleep(0.01)
        assert marker.exists(), delete.communicate()
        res = llmforge(workspace.root, *imp, "--force")
        assert res.exit_code == 0, res.output
    finally:
        go.touch()
        out, err = delete.communicate(timeout=60)
    assert delete.returncode == 0, out + err
    assert ModelRegistry(workspace).names() == ["m"]
    res = llmforge(workspace.root, "models", "validate", "m")
    assert res.exit_code == 0, res.output  # the import's folder was not deleted under it


# -- 4. a registry.json with a name twice is corrupt, never rewritten -------------------------
def test_a_duplicated_name_in_the_registry_is_refused_and_never_overwritten(
    workspace: Workspace, tiny_qwen_repo: Path
) -> None:
    make_model(workspace, "m")
    make_model(workspace, "n")
    text = workspace.registry_path.read_text()
    one = json.dumps(json.loads(text)["models"]["m"])
    # the same name twice, as a merge conflict resolved by hand can leave it
    write_registry(workspace, text.replace('"models": {', f'"models": {{"m": {one},', 1))
    before = snapshot(workspace.root)
    for args in (
        ("models", "list"),
        ("models", "delete", "n", "--yes"),
        ("models", "import", str(tiny_qwen_repo), "--name", "x", "--accept-license"),
        ("models", "validate"),
    ):
        res = llmforge(workspace.root, *args)
        refused(res, "names the model 'm' twice", "delete the other", code=3)
        assert snapshot(workspace.root) == before, args


def test_a_duplicated_key_inside_an_entry_is_refused(workspace: Workspace) -> None:
    write_registry(
        workspace,
        '{"schema_version": 1, "models": {"m": {"model_name": "m", "source": "local", '
        '"architecture": "qwen2", "local_path": "m", "local_path": "../../etc"}}}',
    )
    refused(llmforge(workspace.root, "models", "list"), "the key 'local_path' twice", code=3)


# -- 6. odd filesystems: a lock that is a folder, models or runs that are files, long names,
#       a full disk while the registry is written ---------------------------------------------
def test_a_registry_lock_that_is_a_folder_is_a_clear_error(
    workspace: Workspace, tiny_qwen_repo: Path
) -> None:
    make_model(workspace, "m")
    (workspace.models_dir / ".registry.lock").unlink(missing_ok=True)
    (workspace.models_dir / ".registry.lock").mkdir()
    before = snapshot(workspace.root)
    for args in (
        ("models", "delete", "m", "--yes"),
        ("models", "import", str(tiny_qwen_repo), "--name", "x", "--accept-license"),
    ):
        res = llmforge(workspace.root, *args)
        refused(res, ".registry.lock is a folder", "nothing was changed", "remove it", code=1)
        assert snapshot(workspace.root) == before, args


def test_a_trash_that_is_a_file_is_a_clear_error(workspace: Workspace) -> None:
    make_model(workspace, "m")
    (workspace.models_dir / ".trash").write_text("not a folder")
    before = snapshot(workspace.root)
    res = llmforge(workspace.root, "models", "delete", "m", "--yes")
    refused(res, ".trash", "must be a folder", "nothing was changed", code=1)
    assert snapshot(workspace.root) == before


@pytest.mark.parametrize(
    "args",
    [
        ("models", "list"),
        ("models", "list", "--json"),
        ("models", "info", "m"),
        ("models", "delete", "m", "--yes"),
        ("models", "validate"),
        ("models", "import", "{repo}", "--name", "x", "--accept-license"),
    ],
)
def test_models_that_is_a_file_is_a_clear_error(
    workspace: Workspace, tiny_qwen_repo: Path, args: tuple[str, ...]
) -> None:
    workspace.models_dir.write_text("not a folder")
    before = snapshot(workspace.root)
    res = llmforge(workspace.root, *(a.format(repo=tiny_qwen_repo) for a in args))
    refused(res, "models is a file, not a folder", "Move or rename that file")
    assert snapshot(workspace.root) == before


def test_runs_that_is_a_file(workspace: Workspace) -> None:
    make_model(workspace, "m")
    workspace.runs_dir.write_text("not a folder")
    assert llmforge(workspace.root, "models", "list").exit_code == 0
    before = snapshot(workspace.root)
    refused(llmforge(workspace.root, "ckpt", "list"), "runs is a file, not a folder")
    assert snapshot(workspace.root) == before
    res = llmforge(workspace.root, "models", "delete", "m", "--yes")  # no run can need it
    assert res.exit_code == 0, res.output


LONG = "a" * 5000


@pytest.mark.parametrize(
    "args",
    [
        ("info", LONG),
        ("info", LONG, "--json"),
        ("delete", LONG, "--yes"),
        ("validate", LONG),
        ("import", "{repo}", "--name", LONG, "--accept-license"),
    ],
)
def test_a_5000_character_name_is_a_short_clear_error(
    workspace: Workspace, tiny_qwen_repo: Path, args: tuple[str, ...]
) -> None:
    make_model(workspace, "m")
    before = snapshot(workspace.root)
    res = llmforge(workspace.root, "models", *(a.format(repo=tiny_qwen_repo) for a in args))
    err = refused(res, "5,000")
    assert len(err) < 600, err  # the name is shown cut short, not 5,000 characters of it
    assert snapshot(workspace.root) == before


def _under_file_size_limit(home: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
    def apply() -> None:  # in the child: a write past the limit fails with EFBIG
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "llmforge", "--home", str(home), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=cli_env(), preexec_fn=apply
    )


def test_a_full_disk_while_the_registry_is_written_changes_nothing(scratch_ws: Workspace) -> None:
    # A registry bigger than the file-size limit: every other file these commands write
    # (the journal, hard links) is smaller, so the registry write is what fails.
    for i in range(60):
        make_model(scratch_ws, f"m{i:02d}", files=MODEL_FILES)
    assert scratch_ws.registry_path.stat().st_size > 40_000
    before = snapshot(scratch_ws.root)
    for args in (
        ("models", "delete", "m07", "--yes"),
        ("ckpt", "register", "scratch", "--name", "new"),
        ("ckpt", "register", "scratch", "--name", "m08", "--force"),
    ):
        res = _under_file_size_limit(scratch_ws.root, 20_000, *args)
        refused(res, "Could not write", "registry.json", "File too large", "unchanged", code=1)
        assert snapshot(scratch_ws.root) == before, args


# -- 7. markup and escape sequences in registry fields never reach the terminal -------------
def test_markup_and_escapes_in_registry_fields_are_shown_inert(workspace: Workspace) -> None:
    hostile = entry_json(
        "m",
        model_id="\x1b[31mOrg/Red\x1b[0m",
        license="[/] [bold]MIT[/bold] \x9b2J",
        tokenizer="tok\x1b]0;pwned\x07",
        fine_tuned_from="base",
        details={"note\x1b[2J": "[link=file:///etc]x[/link] \u202eevil", "[/]": "[red]"},
        files={"w\x1b[2J.bin": {"size": 1, "sha256": "0" * 64}},
    )
    write_registry(workspace, json.dumps({"schema_version": 1, "models": {"m": hostile}}))
    (workspace.models_dir / "m").mkdir()  # validate then names the missing file
    outputs = []
    for args in (
        ("info", "m"),
        ("info", "m", "--json"),
        ("list",),
        ("list", "--json"),
        ("validate", "m"),
        ("validate", "m", "--json"),
        ("delete", "m", "--yes"),
    ):
        res = llmforge(workspace.root, "models", *args)
        assert "Traceback" not in res.output and "This is a bug" not in res.output, res.output
        assert res.exit_code == (3 if args[0] == "validate" else 0), res.output
        outputs.append(res.output)
    for out in outputs:
        for bad in ("\x1b", "\x9b", "\x07", "\u202e"):
            assert bad not in out, (bad, out)
    assert "[/] [bold]MIT[/bold]" in outputs[0]  # shown as written, not read as markup
    assert "w.bin is missing" in outputs[4]  # the escape sequence removed, the name shown
    assert json.loads(outputs[1])["license"].startswith("[/] [bold]MIT[/bold]")
