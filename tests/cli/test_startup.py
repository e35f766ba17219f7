"""Start-up: importing the CLI pulls in no heavy library; the entry points run.

Timings are not asserted here (machines differ); ``benchmarks/bench_cli.py`` measures them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "huggingface_hub", "safetensors", "tokenizers")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")}


def test_importing_the_cli_imports_no_heavy_library():
    code = (
        "import sys, llmforge.cli, llmforge.cli.models\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("args", [["--help"], ["models", "list"], ["models", "list", "--json"]])
def test_commands_do_not_import_heavy_libraries(args, tmp_path):
    code = (
        "import sys\n"
        "from llmforge.cli import app\n"
        f"try:\n    app({args!r}, prog_name='llmforge')\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_env()
    )
    assert p.returncode == 0, p.stderr


def _console_script() -> str:
    script = Path(sys.executable).with_name("llmforge")
    if script.exists():
        return str(script)
    found = shutil.which("llmforge")
    if found is None:
        pytest.fail("the llmforge console script is not installed next to this Python")
    return found


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_entry_points_run_help_and_list(launcher, tmp_path):
    cmd = [_console_script()] if launcher == "script" else [sys.executable, "-m", "llmforge"]
    p = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "models" in p.stdout
    p = subprocess.run(
        [*cmd, "models", "list"], capture_output=True, text=True, env=_env(), cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert "No models registered yet" in " ".join(p.stdout.split())
    assert list(tmp_path.iterdir()) == []  # the cwd workspace: listing wrote nothing
