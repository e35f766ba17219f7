"""Run ``python -m llmforge ARGS`` and SIGKILL it at one exact file operation.

    python kill_at.py EVENT PATTERN WHEN [--arg N] [--nth N] -- ARGS...

The one kill launcher of the suite (reliability and store tests use it through
:func:`command`).

- ``EVENT`` is ``write`` (a file opened for writing: ``open``/``os.open`` with a write mode or
  flag), ``rename`` (``os.rename``/``os.replace``; PATTERN is matched against the destination),
  or any other audit event by its name (``os.rename``, ``os.remove``, ``shutil.rmtree``), whose
  argument number ``--arg`` (default 0) is matched.
- ``PATTERN`` is a regular expression searched in the path (``/`` separators).
- ``--nth N``: act at the Nth matching operation (default the first).
- ``WHEN`` is ``before``: the kill lands at the event itself, before the operation happens; or
  ``after``: at the next audit event the process raises, so the file is already opened
  (created, truncated) and possibly written.

The hook is a Python audit hook (``sys.addaudithook``), so the code under test runs unmodified
and the kill lands at the same point on every run: no timing, no race. Files written by native
code (safetensors' writer) raise no audit event; match the files written around them instead.
If the pattern never matches, the command runs to completion and its exit status is returned.
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import subprocess
import sys
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _path(value: object) -> str | None:
    if isinstance(value, int):
        return None  # an already-open descriptor
    try:
        return os.fsdecode(os.fspath(value))  # type: ignore[arg-type]
    except TypeError:
        return None


def _is_write(mode: object, flags: object) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


KILL_AT = os.path.abspath(__file__)


def command(
    event: str, pattern: str, when: str = "before", *, arg: int | None = None, nth: int = 1
) -> list[str]:
    """The command line that runs ``llmforge`` killed at the operation (append its ARGS)."""
    extra = ([] if arg is None else ["--arg", str(arg)]) + ([] if nth == 1 else ["--nth", str(nth)])
    return [sys.executable, KILL_AT, event, pattern, when, *extra, "--"]


def run(
    home: Path,
    event: str,
    pattern: str,
    *args: str,
    when: str = "before",
    arg: int | None = None,
    nth: int = 1,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``llmforge --home HOME ARGS`` killed at the operation; the finished process."""
    cmd = [*command(event, pattern, when, arg=arg, nth=nth), "--home", str(home), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)


def _matches(event: str, regex: re.Pattern, arg: int, name: str, args: tuple) -> bool:
    if event == "write":
        if name != "open" or len(args) < 3:
            return False
        path = _path(args[0])
        return path is not None and _is_write(args[1], args[2]) and bool(regex.search(path))
    if event == "rename":
        event, arg = "os.rename", 1  # os.replace raises os.rename too
    if name != event or len(args) <= arg:
        return False
    path = _path(args[arg])
    return path is not None and bool(regex.search(path))


def install(event: str, pattern: str, when: str, arg: int = 0, nth: int = 1) -> None:
    """Install the audit hook that kills this process at the matching operation."""
    regex = re.compile(pattern)
    state = {"armed": False, "dying": False, "seen": 0}

    def die() -> None:
        state["dying"] = True
        os.kill(os.getpid(), signal.SIGKILL)

    def hook(name: str, args: tuple) -> None:
        if state["dying"]:
            return
        if state["armed"]:
            die()
        if _matches(event, regex, arg, name, args):
            state["seen"] += 1
            if state["seen"] < nth:
                return
            if when == "before":
                die()
            state["armed"] = True

    sys.addaudithook(hook)


def main() -> None:
    event, pattern, when, *rest = sys.argv[1:]
    options = {"--arg": 0, "--nth": 1}
    while rest and rest[0] in options:
        options[rest[0]] = int(rest[1])
        rest = rest[2:]
    if when not in ("before", "after") or not rest or rest[0] != "--":
        raise SystemExit(__doc__)
    args = rest[1:]
    install(event, pattern, when, options["--arg"], options["--nth"])
    sys.argv = ["llmforge", *args]
    runpy.run_module("llmforge", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
