"""Shared fixtures. Each block is self-contained; add new fixtures below, not inside these."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hubserver import LocalHub
from tiny_models import build_tiny_qwen


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
