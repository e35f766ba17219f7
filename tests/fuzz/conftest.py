"""The fuzz pass: hypothesis-generated files and arguments against the real commands.

Every case runs one ``llmforge`` command in-process on a private copy of a small workspace
(a 4-step from-scratch run, its checkpoint registered as model ``base``) and checks the
promise of the README: the command succeeds or refuses with one clear paragraph (never the
"This is a bug" path, never a traceback, never a screenful), and a refusal leaves the
workspace byte-identical. ``LLMFORGE_FUZZ_EXAMPLES=N`` tries N cases per test (and random
ones: by default the cases are derandomized, so CI sees the same ones every time).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from helpers import snapshot
from train_helpers import run_cli, small_corpus, write_config

EXAMPLES = int(os.environ.get("LLMFORGE_FUZZ_EXAMPLES", "0"))
settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES or 80,
    derandomize=not EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ = settings.get_profile("fuzz")
# An error is one paragraph: a brief echo of the bad value, what is wrong, what to do.
MAX_ERROR_CHARS = 1500
CASES: Counter[str] = Counter()


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


class Sandbox:
    """A private copy of the fuzz workspace, refreshed for every case."""

    def __init__(self, base: Path, root: Path) -> None:
        self.base, self.root = base, root
        self.home = root / "ws"
        self.config = root / "scratch.yaml"

    def reset(self) -> None:
        """Start the next case from the pristine workspace."""
        if self.root.exists():
            shutil.rmtree(self.root)
        shutil.copytree(self.base, self.root, symlinks=True)

    def run(self, kind: str, *args: str, must_not_write: bool = False):
        """Run ``llmforge --home WS ARGS`` and check the promise; returns the result."""
        CASES[kind] += 1
        before = snapshot(self.home)
        res = run_cli(self.home, *args)
        check_outcome(res, args)
        if res.exit_code != 0 or must_not_write:
            after = snapshot(self.home)
            changed = sorted(
                k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
            )
            assert not changed, f"{args!r} (exit {res.exit_code}) changed {changed[:8]}"
        return res


def check_outcome(res, args: tuple[str, ...]) -> None:
    """Success, or a refusal the user can read: one bounded paragraph, no bug path."""
    out = (res.stdout or "") + (res.stderr or "")
    what = f"llmforge {' '.join(a[:60] for a in args)[:300]}"
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"{what}: raised {res.exception!r}"
    )
    assert "This is a bug" not in out, f"{what}:\n{out[-2000:]}"
    assert "Traceback (most recent call last)" not in out, f"{what}:\n{out[-2000:]}"
    if res.exit_code != 0:
        assert res.exit_code in (1, 2, 3), f"{what}: exit {res.exit_code}\n{out[-1000:]}"
        error = res.stderr or res.stdout
        assert error.strip(), f"{what}: refused in silence"
        assert len(error) <= MAX_ERROR_CHARS, (
            f"{what}: a {len(error)}-character error:\n{error[:600]}"
        )


@pytest.fixture
def sandbox(fuzz_base: Path, tmp_path: Path) -> Iterator[Sandbox]:
    """The sandbox of one fuzz test (reset it at the start of every case)."""
    yield Sandbox(fuzz_base, tmp_path / "case")


def pytest_terminal_summary(terminalreporter) -> None:
    if CASES:
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(CASES.items()))
        terminalreporter.write_line(f"fuzz pass: {sum(CASES.values())} cases ({parts})")


@pytest.fixture(scope="session")
def monkeypatch_offline() -> Iterator[None]:
    """No fuzzed hub id may reach a network: huggingface_hub in offline mode."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old
