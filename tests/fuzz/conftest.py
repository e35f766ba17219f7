"""The fuzz pass: hypothesis-generated files and arguments against the real commands.

Every case runs one ``llmforge`` command in-process on a private copy of a small workspace
(a 4-step from-scratch run, its checkpoint registered as model ``base``) and checks the
promise of the README: the command succeeds or refuses with one clear paragraph (never the
"This is a bug" path, never a traceback, never a screenful), and a refusal leaves the
workspace byte-identical. ``LLMFORGE_FUZZ_EXAMPLES=N`` tries N cases per test (and random
ones: by default the cases are derandomized, so CI sees the same ones every time).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_sandbox import CASES, Sandbox

from train_helpers import run_cli, small_corpus, write_config


@pytest.fixture(scope="session")
def fuzz_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with run ``scratch`` (step 4) and model ``base`` registered from it."""
    base = tmp_path_factory.mktemp("fuzz-base")
    home = base / "ws"
    home.mkdir()
    data = small_corpus(base / "corpus.txt", chars=8000)
    cfg = write_config(base / "scratch.yaml", data_path=str(data), max_steps=4, sample_interval=0)
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    res = run_cli(home, "ckpt", "register", "scratch", "--name", "base")
    assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def sandbox(fuzz_base: Path, tmp_path: Path) -> Iterator[Sandbox]:
    """The sandbox of one fuzz test (reset it at the start of every case)."""
    yield Sandbox(fuzz_base, tmp_path / "case")


def pytest_terminal_summary(terminalreporter) -> None:
    if CASES:
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(CASES.items()))
        terminalreporter.write_line(f"fuzz pass: {sum(CASES.values())} cases ({parts})")
