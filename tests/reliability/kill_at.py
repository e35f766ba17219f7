"""Run ``python -m llmforge ARGS`` and SIGKILL it at one exact file operation.

    python kill_at.py EVENT PATTERN WHEN -- ARGS...

- ``EVENT`` is ``write`` (a file opened for writing: ``open``/``os.open`` with a write mode or
  flag) or ``rename`` (``os.rename``/``os.replace``; PATTERN is matched against the destination).
- ``PATTERN`` is a regular expression searched in the path (``/`` separators).
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
import sys

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


def install(event: str, pattern: str, when: str) -> None:
    """Install the audit hook that kills this process at the matching operation."""
    regex = re.compile(pattern)
    state = {"armed": False, "dying": False}

    def die() -> None:
        state["dying"] = True
        os.kill(os.getpid(), signal.SIGKILL)

    def hook(name: str, args: tuple) -> None:
        if state["dying"]:
            return
        if state["armed"]:
            die()
        matched = False
        if event == "write" and name == "open" and len(args) >= 3:
            path = _path(args[0])
            matched = path is not None and _is_write(args[1], args[2]) and bool(regex.search(path))
        elif event == "rename" and name == "os.rename" and len(args) >= 2:
            path = _path(args[1])
            matched = path is not None and bool(regex.search(path))
        if matched:
            if when == "before":
                die()
            state["armed"] = True

    sys.addaudithook(hook)


def main() -> None:
    event, pattern, when, sep, *args = sys.argv[1:]
    if event not in ("write", "rename") or when not in ("before", "after") or sep != "--":
        raise SystemExit(__doc__)
    install(event, pattern, when)
    sys.argv = ["llmforge", *args]
    runpy.run_module("llmforge", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
