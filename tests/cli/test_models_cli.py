"""``llmforge models list | info | delete | validate``: output and effect on disk."""

from __future__ import annotations

import json

import pytest

from helpers import dir_size, flat, make_model, run_on_terminal, snapshot
from llmforge.store.registry import ModelRegistry

COLUMNS = ("name", "architecture", "parameters", "disk", "source", "fine_tuned_from", "created")


def assert_failed_cleanly(result, before, ws, *phrases, code=None):
    """A bad-input case: non-zero exit, the problem and the fix on stderr, nothing changed."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code
    assert "Traceback" not in result.output
    err = flat(result.stderr)
    assert err.startswith("Error:")
    for p in phrases:
        assert p in err, (p, err)
    assert snapshot(ws.root) == before


@pytest.fixture
def family(workspace):
    """base (from the hub) <- ft1 <- ft2, and an unrelated model."""
    make_model(workspace, "base", source="huggingface", model_id="Org/Base-0.5B")
    make_model(workspace, "ft1", source="fine-tune", fine_tuned_from="base")
    make_model(workspace, "ft2", source="fine-tune", fine_tuned_from="ft1")
    make_model(workspace, "other", files={"w.bin": b"x" * 300}, architecture="qwen2")
    return workspace


# -- list ------------------------------------------------------------------------------------
def test_list_empty_is_friendly(cli, workspace):
    res = cli("models", "list")
    assert res.exit_code == 0
    assert "No models registered yet" in flat(res.stdout)
    assert "llmforge models import" in flat(res.stdout)
    assert res.stderr == ""
    assert not workspace.models_dir.exists()  # listing creates nothing


def test_list_empty_json(cli):
    res = cli("models", "list", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout) == []


def test_list_table_has_columns_and_rows(cli, family):
    # a wide terminal: at 80 columns Rich folds cells (and headers) of a 7-column table
    res = cli("models", "list", env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "4 model(s)" in out
    for col in COLUMNS:
        assert col in out, col
    for name in ("base", "ft1", "ft2", "other"):
        assert name in out
    assert "1.2K" in out  # parameters, human-readable
    assert "563 B" in out and "300 B" in out  # disk size


def test_list_json_has_all_entries(cli, family):
    res = cli("models", "list", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert [d["model_name"] for d in data] == ["base", "ft1", "ft2", "other"]
    by = {d["model_name"]: d for d in data}
    assert by["ft2"]["fine_tuned_from"] == "ft1"
    assert by["base"]["model_id"] == "Org/Base-0.5B"
    assert by["other"]["disk_bytes"] == 300
    assert by["other"]["files"]["w.bin"]["size"] == 300


def test_list_on_corrupt_registry_fails_and_keeps_file(cli, workspace):
    workspace.models_dir.mkdir()
    workspace.registry_path.write_text('{"schema_version": 1, "models": [')
    before = snapshot(workspace.root)
    for args in (("models", "list"), ("models", "list", "--json")):
        res = cli(*args)
        assert_failed_cleanly(
            res,
            before,
            workspace,
            str(workspace.registry_path),
            "not valid JSON",
            "Restore it from git",
            code=3,
        )
        assert res.stdout == ""


# -- info ------------------------------------------------------------------------------------
def test_info_shows_fields_files_and_lineage(cli, family):
    res = cli("models", "info", "ft2")
    assert res.exit_code == 0, res.output
    out = res.stdout
    for field in (
        "model_name",
        "source",
        "architecture",
        "fine_tuned_from",
        "created_at",
        "local_path",
        "tokenizer",
        "license",
    ):
        assert field in out
    assert "models/ft2" in out and "fine-tune" in out and "tiny-tok" in out
    for f in ("config.json", "model.safetensors", "tokenizer/tokenizer.json"):
        assert f in out
    assert "3 file(s)" in out
    # the lineage tree: hub origin, grandparent, parent, the model, in that order
    lineage = out[out.index("Lineage") :]
    positions = [lineage.index(x) for x in ("Org/Base-0.5B", "base", "ft1", "ft2")]
    assert positions == sorted(positions)


def test_info_shows_children(cli, family):
    res = cli("models", "info", "ft1")
    assert res.exit_code == 0
    assert "ft2 (child)" in res.stdout


def test_info_json(cli, family):
    res = cli("models", "info", "ft2", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["model_name"] == "ft2"
    assert data["lineage"] == ["ft1", "base"]
    assert data["children"] == []
    assert set(data["files"]) == {"config.json", "model.safetensors", "tokenizer/tokenizer.json"}
    assert json.loads(cli("models", "info", "base", "--json").stdout)["children"] == ["ft1"]


def test_info_with_lineage_cycle_does_not_hang(cli, workspace):
    make_model(workspace, "a", fine_tuned_from="b")
    make_model(workspace, "b", fine_tuned_from="a")
    res = cli("models", "info", "a", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["lineage"] == ["b"]
    assert cli("models", "info", "a").exit_code == 0


def test_info_with_deleted_parent(cli, workspace):
    make_model(workspace, "orphan", fine_tuned_from="gone")
    res = cli("models", "info", "orphan")
    assert res.exit_code == 0
    assert "gone" in res.stdout[res.stdout.index("Lineage") :]


def test_info_unknown_name(cli, family):
    before = snapshot(family.root)
    res = cli("models", "info", "ft3")
    assert_failed_cleanly(
        res,
        before,
        family,
        "No model named 'ft3'",
        "Did you mean",
        "base, ft1, ft2, other",
        code=1,
    )


# -- delete ----------------------------------------------------------------------------------
def test_delete_yes_removes_entry_and_files_and_reports_bytes(cli, family):
    folder = family.models_dir / "other"
    assert dir_size(folder) == 300
    res = cli("models", "delete", "other", "--yes")
    assert res.exit_code == 0, res.output
    assert "Deleted 'other'" in res.stdout and "freed 300 B" in res.stdout
    assert not folder.exists()
    assert ModelRegistry(family).names() == ["base", "ft1", "ft2"]
    assert "other" not in json.loads(family.registry_path.read_text())["models"]
    assert (family.models_dir / "base").is_dir()


def test_delete_without_yes_and_no_tty_changes_nothing(cli, family):
    before = snapshot(family.root)
    res = cli("models", "delete", "other")
    assert_failed_cleanly(res, before, family, "confirmation", "--yes", code=2)


def test_delete_confirm_no_keeps_everything(family):
    # A real pseudo-terminal as stdin: the confirmation is asked, the user answers "n".
    before = snapshot(family.root)
    res = run_on_terminal(family.root, "models", "delete", "other", typed=b"n\n")
    assert "Delete model 'other'" in res.stdout
    assert res.returncode == 1  # aborted
    assert "Traceback" not in res.stdout + res.stderr
    assert snapshot(family.root) == before


def test_delete_confirm_yes_deletes(family):
    res = run_on_terminal(family.root, "models", "delete", "other", typed=b"y\n")
    assert "Delete model 'other'" in res.stdout
    assert res.returncode == 0, res.stdout + res.stderr
    assert "freed 300 B" in res.stdout
    assert not (family.models_dir / "other").exists()


def test_delete_warns_about_children(cli, family):
    res = cli("models", "delete", "base", "--yes")
    assert res.exit_code == 0, res.output
    assert "Warning:" in res.stderr and "ft1" in res.stderr and "fine_tuned_from" in res.stderr
    assert "freed 563 B" in res.stdout
    assert not (family.models_dir / "base").exists()
    assert ModelRegistry(family).get("ft1").fine_tuned_from == "base"  # children untouched
    assert (family.models_dir / "ft1").is_dir()


def test_delete_unknown_name(cli, family):
    before = snapshot(family.root)
    res = cli("models", "delete", "bse", "--yes")
    assert_failed_cleanly(res, before, family, "No model named 'bse'", "Did you mean 'base'")


def _share_folder(ws, name: str, local_path: str) -> None:
    """Hand-edit the registry so ``name``'s local_path names another folder."""
    data = json.loads(ws.registry_path.read_text())
    data["models"][name]["local_path"] = local_path
    ws.registry_path.write_text(json.dumps(data))


@pytest.mark.parametrize("local_path", ["one", "one/", "./one", "one/sub", "registry.json"])
def test_an_entry_whose_folder_is_not_its_own_name_is_refused(cli, workspace, local_path):
    # Two entries sharing a folder (or one pointing at the registry file) once made
    # `models delete` remove the other model's files; such a registry is now corrupt.
    make_model(workspace, "one")
    make_model(workspace, "two")
    _share_folder(workspace, "two", local_path)
    before = snapshot(workspace.root)
    for args in (("delete", "two", "--yes"), ("validate",), ("list",), ("info", "one")):
        res = cli("models", *args)
        assert_failed_cleanly(
            res, before, workspace, "models.two", "local_path must be the model's own name", code=3
        )


def test_delete_entry_whose_folder_vanished(cli, family):
    import shutil

    shutil.rmtree(family.models_dir / "other")
    res = cli("models", "delete", "other", "--yes")
    assert res.exit_code == 0
    assert "freed 0 B" in res.stdout
    assert "other" not in ModelRegistry(family).names()


# -- validate --------------------------------------------------------------------------------
def test_validate_all_ok(cli, family):
    before = snapshot(family.root)
    res = cli("models", "validate")
    assert res.exit_code == 0, res.output
    for name in ("base", "ft1", "ft2", "other"):
        assert f"OK   {name}" in res.stdout
    assert res.stderr == ""
    assert snapshot(family.root) == before


def test_validate_one_ok_and_json(cli, family):
    res = cli("models", "validate", "ft1")
    assert res.exit_code == 0
    assert "OK   ft1 (3 files)" in res.stdout and "base" not in res.stdout
    data = json.loads(cli("models", "validate", "--json").stdout)
    assert {d["model_name"]: d["ok"] for d in data} == dict.fromkeys(
        ["base", "ft1", "ft2", "other"], True
    )


def test_validate_empty_registry(cli):
    res = cli("models", "validate")
    assert res.exit_code == 0
    assert "nothing to validate" in res.stdout


def test_validate_modified_file_same_size(cli, family):
    p = family.models_dir / "ft1" / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF
    p.write_bytes(bytes(data))
    before = snapshot(family.root)
    res = cli("models", "validate")
    assert_failed_cleanly(res, before, family, "1 of 4", "ft1", "Re-import", code=3)
    assert "FAIL ft1" in res.stdout
    assert "model.safetensors does not match its recorded sha256" in flat(res.stdout)
    assert "OK   base" in res.stdout  # the others are still reported


def test_validate_resized_and_deleted_files(cli, family):
    (family.models_dir / "ft2" / "config.json").write_text("{}")
    (family.models_dir / "other" / "w.bin").unlink()
    before = snapshot(family.root)
    res = cli("models", "validate")
    assert_failed_cleanly(res, before, family, "2 of 4", "ft2", "other", "Re-import", code=3)
    out = flat(res.stdout)
    assert "config.json has 2 bytes, the registry records 23" in out
    assert "w.bin is missing" in out
    data = json.loads(cli("models", "validate", "--json").stdout)
    assert {d["model_name"]: d["ok"] for d in data} == {
        "base": True,
        "ft1": True,
        "ft2": False,
        "other": False,
    }


def test_validate_folder_vanished_is_reported(cli, family):
    import shutil

    shutil.rmtree(family.models_dir / "ft2")
    before = snapshot(family.root)
    res = cli("models", "validate", "ft2")
    assert_failed_cleanly(res, before, family, "ft2", "Re-import", code=3)
    assert "FAIL ft2" in res.stdout
    assert "folder models/ft2 is missing" in flat(res.stdout)


def test_validate_unknown_name(cli, family):
    before = snapshot(family.root)
    res = cli("models", "validate", "nope")
    assert_failed_cleanly(res, before, family, "No model named 'nope'", "Available models")
    assert res.stdout == ""


def test_validate_symlink_escape_is_reported_not_followed(cli, workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    make_model(workspace, "sneaky")
    import os
    import shutil

    shutil.rmtree(workspace.models_dir / "sneaky")
    os.symlink(outside, workspace.models_dir / "sneaky")
    before = snapshot(workspace.root)
    res = cli("models", "validate")
    assert_failed_cleanly(res, before, workspace, "sneaky", code=3)
    assert "outside" in flat(res.stdout)
    # and delete refuses to touch what lies outside the workspace
    (outside / "precious").write_text("keep")
    assert cli("models", "delete", "sneaky", "--yes").exit_code == 0
    assert (outside / "precious").read_text() == "keep"


@pytest.mark.parametrize(
    "cmd", [("info", "../x"), ("delete", "../x", "--yes"), ("validate", "A B")]
)
def test_invalid_names_are_not_found_and_change_nothing(cli, family, cmd):
    before = snapshot(family.root)
    res = cli("models", *cmd)
    assert_failed_cleanly(res, before, family, "No model named", "Available models")


@pytest.mark.parametrize(
    "args",
    [("models", "info", "m1"), ("models", "delete", "m1", "--yes"), ("models", "validate")],
)
def test_commands_on_corrupt_registry_change_nothing(cli, workspace, args):
    make_model(workspace, "m1")
    data = json.loads(workspace.registry_path.read_text())
    data["models"]["m1"]["files"]["config.json"]["size"] = -1
    workspace.registry_path.write_text(json.dumps(data))
    before = snapshot(workspace.root)
    res = cli(*args)
    assert_failed_cleanly(
        res, before, workspace, str(workspace.registry_path), "models.m1.files", code=3
    )


def test_info_on_hand_edited_parent_is_an_integrity_error_not_a_crash(cli, workspace):
    make_model(workspace, "m1")
    data = json.loads(workspace.registry_path.read_text())
    data["models"]["m1"]["fine_tuned_from"] = "[/bold]"  # once crashed Rich's markup parser
    workspace.registry_path.write_text(json.dumps(data))
    before = snapshot(workspace.root)
    res = cli("models", "info", "m1")
    assert_failed_cleanly(res, before, workspace, "fine_tuned_from", "Restore it", code=3)
    assert "Unexpected error" not in res.stderr
