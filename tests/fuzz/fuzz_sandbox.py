"""The fuzz pass's sandbox and settings (imported by the tests; fixtures live in conftest.py).

Kept out of conftest.py: with several conftest.py files in the suite, ``from conftest import``
can resolve to another folder's.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings

from helpers import snapshot
from train_helpers import run_cli

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
