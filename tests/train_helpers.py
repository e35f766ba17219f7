"""Helpers for training tests: a tiny config, a small corpus, running the CLI."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import yaml
from typer.testing import CliRunner

from llmforge.cli import app

TINY = {
    "n_layers": 1,
    "d_model": 32,
    "n_heads": 2,
    "block_size": 32,
    "dropout": 0.1,
    "batch_size": 4,
    "max_steps": 8,
    "warmup_steps": 2,
    "learning_rate": 3e-3,
    "min_lr": 3e-4,
    "log_interval": 1,
    "eval_interval": 3,
    "eval_steps": 2,
    "sample_interval": 5,
    "sample_tokens": 8,
    "save_interval": 4,
    "keep_last": 5,
}


def small_corpus(path: Path, chars: int = 30_000) -> Path:
    """Write real text (the source of the stdlib's textwrap module) to ``path``."""
    src = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    path.write_text(src.read_text(encoding="utf-8")[:chars], encoding="utf-8")
    return path


def write_config(path: Path, **overrides: object) -> Path:
    """Write a tiny training config (with ``overrides``) as YAML."""
    path.write_text(yaml.safe_dump({**TINY, **overrides}), encoding="utf-8")
    return path


def run_cli(home: Path, *args: str):
    """Run ``llmforge --home HOME ARGS`` in-process; returns Click's Result."""
    return CliRunner().invoke(app, ["--home", str(home), *args])


def import_from_local_hub(hub, repo_id: str, folder: Path, home: Path, name: str) -> None:
    """Serve ``folder`` as ``repo_id`` on the local hub and import it into ``home`` as ``name``.

    The hub environment (endpoint, an HF cache inside ``home``'s parent, no token) is set only
    for the import, so module-scoped fixtures can use it too.
    """
    import pytest

    hub.add_repo(repo_id, folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", hub.url)
        mp.setenv("HF_HOME", str(home.parent / "hf-home"))
        mp.delenv("HF_TOKEN", raising=False)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        home.mkdir(parents=True, exist_ok=True)
        res = run_cli(home, "models", "import", repo_id, "--name", name, "--accept-license")
        assert res.exit_code == 0, res.output
