"""``llmforge models import`` end to end: in-process with CliRunner, and one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import assert_unchanged, snapshot
from hubserver import LocalHub
from llmforge.cli import app

TOKEN = "hf_cli_secret_987"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest.fixture
def served(hub_env: LocalHub, tiny_qwen_repo: Path) -> str:
    hub_env.add_repo("Qwen/Qwen2-Tiny", tiny_qwen_repo)
    hub_env.add_repo("Qwen/Gated-Tiny", tiny_qwen_repo, gated=True, tokens={TOKEN})
    return "Qwen/Qwen2-Tiny"


def run(home: Path, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["--home", str(home), "models", "import", *args], env=env)


def test_import_by_url_then_list_and_info(home: Path, served: str, hub_env: LocalHub) -> None:
    res = run(home, f"https://huggingface.co/{served}", "--accept-license")
    assert res.exit_code == 0, res.output
    assert "Imported 'qwen2-tiny'" in res.output and "apache-2.0" in res.output
    assert "model.safetensors (downloaded)" in res.output  # plain lines when not a terminal
    info = CliRunner().invoke(app, ["--home", str(home), "models", "info", "qwen2-tiny", "--json"])
    data = json.loads(info.stdout)
    assert data["source"] == "huggingface" and data["architecture"] == "qwen2"
    assert data["license"] == "apache-2.0" and data["license_accepted_at"]
    again = run(home, served, "--name", "second", "--accept-license")
    assert again.exit_code == 0 and "nothing was downloaded" in again.output


def test_license_needs_acceptance_without_terminal(home: Path, served: str) -> None:
    before = snapshot(home)
    res = run(home, served)
    assert res.exit_code == 1
    assert "--accept-license" in res.output and "apache-2.0" in res.output
    assert "Traceback" not in res.output
    assert not (home / "models").exists()  # nothing at all was written before consent
    assert_unchanged(home, before)  # nothing, not even in models/.cache


def test_name_taken_suggests_name_or_force(home: Path, served: str) -> None:
    assert run(home, served, "--name", "tiny", "--accept-license").exit_code == 0
    before = (home / "models" / "registry.json").read_bytes()
    res = run(home, served, "--name", "tiny", "--accept-license")
    assert res.exit_code == 1 and "--name" in res.output and "--force" in res.output
    assert (home / "models" / "registry.json").read_bytes() == before
    res = run(home, served, "--name", "tiny", "--accept-license", "--force")
    assert res.exit_code == 0 and "Replaced 'tiny'" in res.output


def test_gated_token_from_env_is_never_written(home: Path, served: str) -> None:
    res = run(home, "Qwen/Gated-Tiny", "--accept-license")
    assert res.exit_code == 1 and "gated" in res.output and "--token" in res.output
    res = run(home, "Qwen/Gated-Tiny", "--accept-license", env={"HF_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output
    res2 = run(home, "Qwen/Gated-Tiny", "--name", "g2", "--accept-license", "--token", TOKEN)
    assert res2.exit_code == 0
    for text in (res.output, res2.output, (home / "models" / "registry.json").read_text()):
        assert TOKEN not in text


def test_repo_not_found_exit_code(home: Path, served: str) -> None:
    res = run(home, "Qwen/Nope", "--accept-license")
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output


def test_subprocess_reads_hf_endpoint(
    home: Path, served: str, hub_env: LocalHub, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_env.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "LLMFORGE_HOME": str(home),
    }
    env.pop("HF_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "llmforge", "models", "import", served, "--accept-license"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Imported 'qwen2-tiny'" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "llmforge", "models", "import", "Qwen/Missing", "--accept-license"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Error:" in proc.stderr and "Traceback" not in proc.stderr
