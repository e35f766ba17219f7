"""Helpers for the model-store reliability tests: run ``llmforge`` in-process or in a
subprocess paused at an exact step by a Python audit hook, and check refusals (a subprocess
killed at an exact step: ``tests/reliability/kill_at.py``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from helpers import flat
from llmforge.cli import app
from llmforge.workspace import Workspace

MODEL_FILES = {f"w{i}.bin": bytes([i]) * 100 for i in range(4)}

# Runs ``llmforge ARGS`` and, at its first shutil.rmtree, writes MARKER and waits for GO.
PAUSER = r"""
import os, sys, time
marker, go = sys.argv[1], sys.argv[2]
paused = [False]
def hook(ev, args):
    if ev == "shutil.rmtree" and not paused[0]:
        paused[0] = True
        open(marker, "w").close()
        end = time.time() + 60
        while not os.path.exists(go) and time.time() < end:
            time.sleep(0.01)
sys.addaudithook(hook)
from llmforge.cli import main
sys.argv = ["llmforge", *sys.argv[3:]]
main()
"""


def llmforge(home: Path, *args: str, stdin: str | None = None):
    """``llmforge --home HOME ARGS`` in-process (stderr separate)."""
    return CliRunner().invoke(app, ["--home", str(home), *args], input=stdin)


def cli_env() -> dict[str, str]:
    env = {**os.environ, "LLMFORGE_DEBUG": ""}
    env.pop("HF_TOKEN", None)
    return env


def refused(res, *phrases: str, code: int | None = None) -> str:
    """A clean refusal: non-zero exit, one ``Error:`` paragraph naming ``phrases``."""
    out = res.stdout + res.stderr if isinstance(res, subprocess.CompletedProcess) else res.output
    rc = res.returncode if isinstance(res, subprocess.CompletedProcess) else res.exit_code
    assert rc != 0, out
    if code is not None:
        assert rc == code, out
    assert "Traceback" not in out and "This is a bug" not in out, out
    err = flat(res.stderr)
    assert err.startswith("Error:"), err
    for p in phrases:
        assert p in err, (p, err)
    return err


def visible(models: Path) -> list[str]:
    """Model folders (hidden bookkeeping folders are not models)."""
    return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))


def write_registry(ws: Workspace, text: str) -> None:
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    ws.registry_path.write_text(text)


def entry_json(name: str, **fields: object) -> dict:
    base = {"model_name": name, "source": "local", "architecture": "qwen2", "local_path": name}
    return {**base, **fields}
