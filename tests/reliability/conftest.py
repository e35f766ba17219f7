"""Fixtures of the reliability tests: a tiny from-scratch run, copied per test; a workspace
with one model imported from the local hub."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hubserver import LocalHub
from llmforge.workspace import Workspace
from store_helpers import llmforge
from train_helpers import small_corpus, write_config


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with the 4-step from-scratch run ``scratch`` (checkpoint step-000004)."""
    base = tmp_path_factory.mktemp("scratch-run")
    home = base / "ws"
    home.mkdir()
    data = small_corpus(base / "c.txt", chars=8000)
    cfg = write_config(base / "scratch.yaml", data_path=str(data), max_steps=4)
    res = llmforge(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def scratch_ws(scratch_run: Path, tmp_path: Path) -> Workspace:
    """A private copy of the ``scratch_run`` workspace (its config at ``../scratch.yaml``)."""
    shutil.copy(scratch_run / "scratch.yaml", tmp_path / "scratch.yaml")
    shutil.copy(scratch_run / "c.txt", tmp_path / "c.txt")
    shutil.copytree(scratch_run / "ws", tmp_path / "ws")
    return Workspace(root=(tmp_path / "ws").resolve())


@pytest.fixture
def base_ws(cli, workspace: Workspace, hub_env: LocalHub, tiny_qwen_repo: Path) -> Workspace:
    """A workspace that already holds one model imported from the hub (a warm cache)."""
    hub_env.add_repo("Base/tiny", tiny_qwen_repo)
    res = cli("models", "import", "Base/tiny", "--name", "base", "--accept-license")
    assert res.exit_code == 0, res.output
    return workspace
