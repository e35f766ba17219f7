"""Shared fixtures: an empty workspace, a CLI runner, a tiny Qwen2 repo and a local hub.

Each block is self-contained; add new fixtures below, not inside these.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from llmforge.workspace import Workspace

sys.path.insert(0, str(Path(__file__).parent))

from hubserver import LocalHub
from tiny_models import build_tiny_qwen


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The user cache (``XDG_CACHE_HOME``: measured CPU matmul rates) lies in a temp folder
    for the whole session, module-scoped fixtures included."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees the developer's LLMFORGE_HOME, LLMFORGE_DEBUG, terminal width or HF token,
    and none can reach the real Hugging Face Hub: the endpoint defaults to a closed local port
    (tests that need a hub point it at tests/hubserver.py) and the HF cache to a temp folder."""
    for var in ("LLMFORGE_HOME", "LLMFORGE_DEBUG", "COLUMNS", "LINES", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


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


# -- import: a tiny Qwen2 repository and a local hub serving it -------------------------------
@pytest.fixture(scope="session")
def tiny_qwen_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like a hub repository holding a random 2-layer Qwen2."""
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen") / "repo")


@pytest.fixture(scope="session")
def hub() -> Iterator[LocalHub]:
    """A running local hub (empty: tests add the repositories they need)."""
    with LocalHub() as server:
        yield server


@pytest.fixture
def hub_env(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    """Point huggingface_hub at the local hub, with HF_HOME inside tmp_path and no token."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return hub
