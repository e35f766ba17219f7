"""The one place errors become messages and exit codes; --version; python -m llmforge."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from helpers import flat, make_model, snapshot
from llmforge import errors
from llmforge.cli import ErrorMappingGroup, app

EXPECTED_CODES = {
    errors.ConfigError: 2,
    errors.InvalidModelNameError: 2,
    errors.ConfirmationRequiredError: 2,
    errors.RegistryCorruptError: 3,
    errors.ModelFilesMissingError: 3,
    errors.UnsafePathError: 3,
    errors.ModelNotFoundError: 1,
    errors.ModelExistsError: 1,
    errors.WorkspaceError: 1,
    errors.RegistryError: 1,
    errors.DataError: 1,
    errors.BadRecordError: 1,
    errors.ChatTemplateError: 1,
    errors.EvalError: 1,
    errors.CheckpointError: 1,
    errors.CheckpointDamagedError: 3,
    errors.ModelInUseError: 1,
    errors.AdapterNotFoundError: 1,
    errors.TrainingError: 1,
    errors.DistributedError: 1,
    errors.RunLockedError: 1,
    errors.RunInUseError: 1,
    errors.ExportError: 1,
    errors.LLMForgeError: 1,
    errors.InvalidSourceError: 2,
    errors.HubError: 1,
    errors.RepoNotFoundError: 1,
    errors.GatedRepoError: 1,
    errors.RevisionNotFoundError: 1,
    errors.HubUnreachableError: 1,
    errors.MalformedTokenError: 2,
    errors.RepoChangedError: 1,
    errors.ChecksumMismatchError: 3,
    errors.UnsupportedArchitectureError: 1,
    errors.LicenseNotAcceptedError: 1,
    errors.InsufficientDiskError: 1,
    errors.UnsafeWeightsError: 3,
    errors.InconsistentModelError: 3,
}


def _all_error_classes() -> list[type[errors.LLMForgeError]]:
    out, todo = [], [errors.LLMForgeError]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return sorted(set(out), key=lambda c: c.__name__)


def _raising_app(exc: BaseException) -> typer.Typer:
    """A real app on the real error-mapping group whose one command raises ``exc``."""
    t = typer.Typer(cls=ErrorMappingGroup)

    @t.callback()
    def root() -> None:
        pass

    @t.command()
    def boom() -> None:
        raise exc

    return t


def test_every_error_class_has_a_known_exit_code():
    assert set(_all_error_classes()) == set(EXPECTED_CODES)


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_error_class_maps_to_exit_code_and_message(cls):
    res = CliRunner().invoke(_raising_app(cls("Something broke.", "Do this to fix it.")), ["boom"])
    assert res.exit_code == EXPECTED_CODES[cls]
    assert flat(res.stderr) == "Error: Something broke. Do this to fix it."
    assert res.stdout == ""
    assert "Traceback" not in res.output


def test_unexpected_exception_is_reported_as_a_bug():
    res = CliRunner().invoke(_raising_app(ZeroDivisionError("division by zero")), ["boom"])
    assert res.exit_code == 1
    err = flat(res.stderr)
    assert "Unexpected error: ZeroDivisionError: division by zero" in err
    assert "LLMFORGE_DEBUG=1" in err
    assert "Traceback" not in res.output


def test_keyboard_interrupt_exits_130():
    res = CliRunner().invoke(_raising_app(KeyboardInterrupt()), ["boom"])
    assert res.exit_code == 130
    assert "Interrupted" in res.stderr


@pytest.mark.parametrize("exc", [errors.ModelNotFoundError("x"), ValueError("y")])
def test_debug_env_lets_the_exception_through(exc, monkeypatch):
    monkeypatch.setenv("LLMFORGE_DEBUG", "1")
    res = CliRunner().invoke(_raising_app(exc), ["boom"])
    assert res.exception is exc
    assert "Error:" not in res.stderr


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_debug_env_off_values(value, monkeypatch):
    monkeypatch.setenv("LLMFORGE_DEBUG", value)
    res = CliRunner().invoke(_raising_app(errors.ModelNotFoundError("x")), ["boom"])
    assert res.exit_code == 1
    assert isinstance(res.exception, SystemExit)


# -- the real app, in a real process -----------------------------------------------------------
def _run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "llmforge", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_real_error_without_and_with_debug(workspace):
    make_model(workspace, "tiny")
    before = snapshot(workspace.root)
    p = _run("--home", str(workspace.root), "models", "info", "tinny")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr + p.stdout
    assert "No model named 'tinny'" in flat(p.stderr) and "Did you mean 'tiny'?" in p.stderr

    p = _run(
        "--home", str(workspace.root), "models", "info", "tinny", env_extra={"LLMFORGE_DEBUG": "1"}
    )
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "ModelNotFoundError" in p.stderr
    assert snapshot(workspace.root) == before


def test_python_m_help_lists_the_commands():
    p = _run("--help")
    assert p.returncode == 0, p.stderr
    for cmd in ("models", "train", "ckpt", "generate"):
        assert cmd in p.stdout
    assert "--home" in p.stdout and "--version" in p.stdout


def test_no_arguments_shows_help():
    res = CliRunner().invoke(app, [])
    assert "Usage" in res.output and "models" in res.output


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.stdout.strip() == f"llmforge {importlib.metadata.version('llmforge')}"


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["models", "list", "--bogus"], "--bogus"),
        (["models", "info"], "Missing argument"),
        (["models", "frobnicate"], "frobnicate"),
    ],
)
def test_usage_error_exits_2_without_traceback(workspace, args, phrase):
    res = CliRunner().invoke(app, ["--home", str(workspace.root), *args])
    assert res.exit_code == 2
    assert phrase in res.stderr
    assert "Unexpected error" not in res.stderr
    assert "Traceback" not in res.output


def test_missing_home_is_reported(tmp_path):
    res = CliRunner().invoke(app, ["--home", str(tmp_path / "nope"), "models", "list"])
    assert res.exit_code == 1
    err = flat(res.stderr)
    assert str(tmp_path / "nope") in err and "--home" in err and "does not exist" in err
    assert "Traceback" not in res.output
    assert not (tmp_path / "nope").exists()


def _own(e: errors.LLMForgeError) -> errors.LLMForgeError:
    """``e`` as an error only this rank can report (like DistributedError, which in a real
    job also leaves the process at once: tested in tests/distributed)."""
    e.every_rank = True
    return e


@pytest.mark.parametrize(
    ("rank", "exc", "shown"),
    [
        ("0", errors.ConfigError("bad key", "fix it"), "Error: bad key fix it"),
        ("1", errors.ConfigError("bad key", "fix it"), ""),  # rank 0 says the same
        ("1", _own(errors.CheckpointError("my write failed", "retry")), "[rank 1] my write failed"),
    ],
)
def test_in_a_multi_process_job_only_rank_0_reports_shared_errors(
    monkeypatch: pytest.MonkeyPatch, rank: str, exc: Exception, shown: str
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    res = CliRunner().invoke(_raising_app(exc), ["boom"])
    assert res.exit_code == exc.exit_code
    assert (shown in flat(res.output)) if shown else res.output == ""
