"""Helpers for import tests against the local hub: repo variants, subprocesses, a terminal.

``variant`` copies the tiny Qwen2 repository and changes it (a file's bytes, config.json keys),
``llmforge_proc`` runs the real console entry point in a subprocess (optionally under a
file-size limit), and ``run_on_terminal`` runs it on a pseudo-terminal, answering the license
prompt the way a person would, and returns every byte the terminal received.
"""

from __future__ import annotations

import json
import os
import pty
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubserver import LocalHub


def variant(
    base: Path,
    dest: Path,
    *,
    files: dict[str, bytes | str] | None = None,
    config: dict[str, Any] | None = None,
    remove: tuple[str, ...] = (),
) -> Path:
    """Copy the repository ``base`` to ``dest``, write ``files``, update config.json keys."""
    shutil.copytree(base, dest)
    for name, data in (files or {}).items():
        raw = data.encode("utf-8") if isinstance(data, str) else data
        (dest / name).write_bytes(raw)
    if config:
        cfg = json.loads((dest / "config.json").read_text())
        cfg.update(config)
        (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in remove:
        (dest / name).unlink()
    return dest


def proc_env(hub: LocalHub, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that talks to the local hub, without a token."""
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for var in ("HF_TOKEN", "LLMFORGE_DEBUG", "LLMFORGE_HOME", "HF_HUB_OFFLINE"):
        env.pop(var, None)
    return env | extra


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` making any write past ``limit`` bytes fail with EFBIG (disk full)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def llmforge_proc(
    home: Path,
    *args: str,
    env: dict[str, str],
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m llmforge --home HOME ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "llmforge", "--home", str(home), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def run_on_terminal(
    args: list[str], env: dict[str, str], answer: bytes | None, timeout: float = 90
) -> tuple[int, bytes]:
    """Run ``python -m llmforge ARGS`` on a pseudo-terminal; answer the license prompt.

    Args:
        args: The command line after ``llmforge``.
        env: Its environment.
        answer: What to type at the prompt; None kills the process (SIGKILL) there instead.
        timeout: Seconds before the test gives up.

    Returns:
        ``(exit code, everything written to the terminal)``.
    """
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmforge", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    out, answered, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and b"accept this license?" in out:
                    if answer is None:
                        proc.kill()
                    else:
                        os.write(master, answer)
                    answered = True
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"the command did not finish in {timeout}s: {out[-2000:]!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(master)
    return proc.returncode, out
