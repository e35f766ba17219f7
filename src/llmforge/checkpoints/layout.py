"""A checkpoint's folder ``runs/<run>/checkpoints/step-NNNNNN/``: its file names, a run's
checkpoints, whether one is complete (and intact, see ``checkpoints/manifest.py``).

Nothing here imports torch: listing and checking checkpoints stays fast.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from llmforge.checkpoints import manifest
from llmforge.errors import CheckpointError
from llmforge.fsutil import iter_files

CHECKPOINTS = "checkpoints"
META_FILE = "meta.json"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
TOKENIZER_DIR = "tokenizer"
REQUIRED = (META_FILE, STATE_FILE, OPTIMIZER_FILE, TOKENIZER_DIR)
SHARDS_DIR = "shards"  # instead of the weights and optimizer.pt: see checkpoints/sharded.py
_STEP_RE = re.compile(r"step-(\d{6,})")


def is_sharded(path: Path) -> bool:
    """Whether the checkpoint at ``path`` is a sharded (FSDP) one."""
    return (path / SHARDS_DIR).is_dir()


def step_dirname(step: int) -> str:
    """``step-000200`` for step 200."""
    return f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are ignored)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and _STEP_RE.fullmatch(p.name) and (p / META_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def check_complete(path: Path, *, full: bool = False) -> None:
    """Raise if ``path`` is not a complete checkpoint directory, or differs from its manifest.

    Args:
        path: The checkpoint directory.
        full: Compare every file's sha256 with the manifest (``ckpt register``, ``export``);
            by default sizes, and the sha256 of small files (see
            :mod:`llmforge.checkpoints.manifest`).

    Raises:
        CheckpointError: Naming the checkpoint and what is missing.
        CheckpointDamagedError: Naming the files that were changed or truncated.
    """
    if not path.is_dir():
        raise CheckpointError(
            f"No checkpoint at {path}.",
            "Give a checkpoint directory (runs/RUN/checkpoints/step-NNNNNN), a run name for "
            "its latest checkpoint, or RUN/step-N; `llmforge ckpt list` shows them.",
        )
    required = REQUIRED
    if is_sharded(path):  # an FSDP checkpoint (checkpoints/sharded.py)
        required = (META_FILE, STATE_FILE, TOKENIZER_DIR, f"{SHARDS_DIR}/.metadata")
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise CheckpointError(
            f"The checkpoint {path} is incomplete: {', '.join(missing)} missing.",
            "Use another checkpoint of the run (an earlier step), or delete this one.",
        )
    manifest.require_intact(path, full=full)


def checkpoint_bytes(path: Path) -> int:
    """Size of a checkpoint on disk."""
    with contextlib.suppress(OSError):
        return sum(f.stat().st_size for f in iter_files(path))
    return 0


def checkpoint_dirs(runs_dir: Path) -> list[Path]:
    """Every checkpoint ``runs/RUN/checkpoints/step-N`` with a ``meta.json`` (no torch needed).

    A missing ``runs/``, or one that is a file, has none.
    """
    try:
        found = [m.parent for m in runs_dir.glob("*/checkpoints/step-*/meta.json")]
    except OSError:
        return []
    return sorted(p for p in found if p.name[5:].isdigit())
