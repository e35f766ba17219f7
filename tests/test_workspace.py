"""Workspace resolution (--home > LLMFORGE_HOME > cwd) and resolve_inside."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from helpers import flat, make_model
from llmforge.cli import app
from llmforge.errors import UnsafePathError, WorkspaceError
from llmforge.workspace import Workspace, resolve_inside, resolve_workspace


@pytest.fixture
def three_dirs(tmp_path, monkeypatch):
    dirs = {k: tmp_path / k for k in ("home", "env", "cwd")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.chdir(dirs["cwd"])
    return dirs


def test_cwd_is_the_default(three_dirs):
    ws = resolve_workspace()
    assert ws.root == three_dirs["cwd"].resolve()
    assert ws.registry_path == three_dirs["cwd"].resolve() / "models" / "registry.json"
    assert ws.runs_dir == three_dirs["cwd"].resolve() / "runs"


def test_env_beats_cwd(three_dirs, monkeypatch):
    monkeypatch.setenv("LLMFORGE_HOME", str(three_dirs["env"]))
    assert resolve_workspace().root == three_dirs["env"].resolve()


def test_empty_env_falls_back_to_cwd(three_dirs, monkeypatch):
    monkeypatch.setenv("LLMFORGE_HOME", "")
    assert resolve_workspace().root == three_dirs["cwd"].resolve()


def test_home_beats_env(three_dirs, monkeypatch):
    monkeypatch.setenv("LLMFORGE_HOME", str(three_dirs["env"]))
    assert resolve_workspace(three_dirs["home"]).root == three_dirs["home"].resolve()
    assert resolve_workspace(str(three_dirs["home"])).root == three_dirs["home"].resolve()


def test_relative_home_is_made_absolute(three_dirs):
    (three_dirs["cwd"] / "sub").mkdir()
    ws = resolve_workspace("sub")
    assert ws.root.is_absolute()
    assert ws.root == (three_dirs["cwd"] / "sub").resolve()


def test_missing_home_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(WorkspaceError) as ei:
        resolve_workspace(missing)
    msg = flat(str(ei.value))
    assert str(missing) in msg and "--home" in msg and "does not exist" in msg
    assert not missing.exists()  # nothing is created


def test_missing_env_home_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFORGE_HOME", str(tmp_path / "nope"))
    with pytest.raises(WorkspaceError, match="LLMFORGE_HOME"):
        resolve_workspace()


def test_home_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WorkspaceError, match="not a directory"):
        resolve_workspace(f)


# -- resolve_inside --------------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["", "/etc/passwd", "..", "../x", "a/../../x", "a/b/../../../x"])
def test_resolve_inside_refuses_escapes(tmp_path, rel):
    base = tmp_path / "base"
    (base / "a" / "b").mkdir(parents=True)
    with pytest.raises(UnsafePathError):
        resolve_inside(base, rel)


def test_resolve_inside_accepts_inner_paths(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    assert resolve_inside(base, "x/y") == base.resolve() / "x" / "y"
    assert resolve_inside(base, "a/../b") == base.resolve() / "b"


def test_resolve_inside_refuses_symlink_escape(tmp_path):
    base = tmp_path / "base"
    outside = tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    os.symlink(outside, base / "link")
    with pytest.raises(UnsafePathError, match="symlink"):
        resolve_inside(base, "link")
    with pytest.raises(UnsafePathError):
        resolve_inside(base, "link/file")
    os.symlink(base / "inner-target", base / "inner")
    assert resolve_inside(base, "inner") == base.resolve() / "inner-target"


def test_model_path_stays_in_models(tmp_path):
    ws = Workspace(root=tmp_path)
    (tmp_path / "models").mkdir()
    assert ws.model_path("m1") == (tmp_path / "models" / "m1").resolve()
    with pytest.raises(UnsafePathError):
        ws.model_path("../runs")


# -- through the CLI ---------------------------------------------------------------------------
def test_cli_workspace_precedence(three_dirs, monkeypatch):
    for key in ("home", "env", "cwd"):
        make_model(Workspace(root=three_dirs[key].resolve()), f"in-{key}", write_files=False)

    def names(*args: str, env: dict[str, str] | None = None) -> list[str]:
        res = CliRunner().invoke(app, [*args, "models", "list", "--json"], env=env)
        assert res.exit_code == 0, res.output
        return [d["model_name"] for d in json.loads(res.stdout)]

    assert names() == ["in-cwd"]
    env = {"LLMFORGE_HOME": str(three_dirs["env"])}
    assert names(env=env) == ["in-env"]
    assert names("--home", str(three_dirs["home"]), env=env) == ["in-home"]
