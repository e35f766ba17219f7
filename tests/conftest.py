"""Shared fixtures: an empty workspace and a CLI runner pointed at it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from typer.testing import CliRunner, Result

from llmforge.workspace import Workspace


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's LLMFORGE_HOME, LLMFORGE_DEBUG or terminal width."""
    for var in ("LLMFORGE_HOME", "LLMFORGE_DEBUG", "COLUMNS", "LINES"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    """An empty workspace directory (no models/ yet)."""
    root = tmp_path / "ws"
    root.mkdir()
    return Workspace(root=root.resolve())


@pytest.fixture
def cli(workspace: Workspace) -> Callable[..., Result]:
    """Run ``llmforge --home WS ARGS...`` in-process; ``result.stderr`` is separate."""
    from llmforge.cli import app

    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, ["--home", str(workspace.root), *args], input=input, env=env)

    return run
