"""``runs delete``: remove a run folder, all or nothing, and say what it freed.

Refusals, before anything changes:

- the run is **running** (a live process holds its lock): always, ``--force`` included. The
  trainer would write its next checkpoint into a folder that is gone (or re-create half of
  it); stop it first (Ctrl-C saves a checkpoint).
- a **registry model was made from one of its checkpoints** (``ckpt register``, the branch
  point of ``train --init-from``), unless ``--force``. The model does not break: registering
  hard-links the checkpoint's files into ``models/NAME/`` (or copies them), so its bytes stay.
  What goes is what only the checkpoint has: the optimizer and trainer state (the model's run
  can no longer be resumed), the checkpoint the model's ``details.checkpoint`` names, and for a
  LoRA adapter entry the one way to make it a full model (``ckpt register CKPT --merge``).

How: under the run's own lock (so no training can start on it meanwhile) and the registry
lock (so no ``ckpt register`` of its checkpoints commits meanwhile), the folder is renamed to
a hidden ``runs/.trash-RUN-PID-N`` (one atomic step: the run is whole, or it is gone), then
deleted. A kill during the deletion leaves only that hidden folder, which ``runs list`` never
shows and the next ``runs delete`` removes.

Bytes freed: a file's bytes are freed when its last hard link goes. A file counts as freed if
every one of its links (``st_nlink``) is inside the run folder; the others (linked into
``models/`` by a registration) stay on disk and are reported apart.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llmforge.errors import RunInUseError, RunLockedError
from llmforge.inspecting import overview, state
from llmforge.store.registry import ModelRegistry
from llmforge.training.run_lock import LOCK_NAME, acquire
from llmforge.workspace import Workspace

_TRASH_PREFIX = ".trash-"


@dataclass
class DeleteResult:
    """What ``runs delete`` did.

    Attributes:
        run: The run's name.
        bytes_freed: Bytes whose last link was in the run.
        bytes_kept: Bytes of the run's files that other links keep on disk.
        files: Files deleted.
        dependents: Registry models made from its checkpoints (deleted with ``--force``).
    """

    run: str
    bytes_freed: int
    bytes_kept: int
    files: int
    dependents: list[str] = field(default_factory=list)


def space(run_dir: Path) -> tuple[int, int, int]:
    """``(bytes freed, bytes kept, files)`` if ``run_dir`` were deleted (hard links counted)."""
    links_inside: dict[tuple[int, int], int] = {}
    sizes: dict[tuple[int, int], tuple[int, int]] = {}
    files = 0
    for dirpath, _, names in os.walk(run_dir):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                key = (st.st_dev, st.st_ino)
                links_inside[key] = links_inside.get(key, 0) + 1
                sizes[key] = (st.st_size, st.st_nlink)
                files += 1
    freed = kept = 0
    for key, (size, nlink) in sizes.items():
        if links_inside[key] >= nlink:
            freed += size
        else:
            kept += size
    return freed, kept, files


def dependents_error(run: str, names: list[str]) -> RunInUseError:
    """The refusal to delete a run whose checkpoints registry models were made from."""
    shown = ", ".join(repr(n) for n in names[:8]) + (
        f" and {len(names) - 8} more" if len(names) > 8 else ""
    )
    return RunInUseError(
        f"The registry model(s) {shown} were made from checkpoints of the run {run!r}. They "
        "keep their own copies (hard links) of the weights and still load, but deleting the "
        "run deletes what only the checkpoints hold: the optimizer and trainer state (no more "
        "resuming), the checkpoint the models name as their source, and for a LoRA adapter "
        "entry the way to merge it into a full model (`ckpt register CKPT --merge`). Nothing "
        "was deleted.",
        f"Pass --force to delete the run anyway, or keep it; `llmforge runs show {run}` lists "
        "which checkpoint each model came from.",
    )


def _trash_name(runs_dir: Path, run: str) -> Path:
    for n in itertools.count():
        candidate = runs_dir / f"{_TRASH_PREFIX}{run}-{os.getpid()}-{n}"
        if not os.path.lexists(candidate):
            return candidate
    raise AssertionError("unreachable")


def clean_trash(runs_dir: Path) -> None:
    """Remove what a killed ``runs delete`` left (hidden ``.trash-*`` folders of dead pids)."""
    with contextlib.suppress(OSError):
        for p in runs_dir.iterdir():
            if not p.name.startswith(_TRASH_PREFIX):
                continue
            pid = p.name.rsplit("-", 2)[-2] if p.name.count("-") >= 3 else ""
            alive = pid.isdigit() and _alive(int(pid))
            if not alive:
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_run(ws: Workspace, run: str, *, force: bool = False) -> DeleteResult:
    """Delete ``runs/RUN`` (see the module docstring for what is refused and why).

    Raises:
        CheckpointError: No such run.
        RunLockedError: The run is being trained.
        RunInUseError: Registry models were made from its checkpoints and ``force`` is False.
    """
    run_dir = overview.find_run(ws, run)
    holder = state.lock_holder(run_dir)
    if holder is not None:
        raise RunLockedError(
            f"The run {run!r} is being trained right now (process {holder.get('pid', '?')} "
            f"holds {run_dir / LOCK_NAME}); deleting its folder would break that training. "
            "Nothing was deleted (--force does not change this).",
            "Stop the training first (Ctrl-C saves a checkpoint), then delete the run.",
        )
    lock = acquire(run_dir)  # a training that started since: refused; new ones wait
    try:
        with _registry_locked(ws) as entries:
            names = overview.registered_from(entries, run_dir)
            if names and not force:
                raise dependents_error(run, names)
            freed, kept, files = space(run_dir)
            trash = _trash_name(ws.runs_dir, run)
            os.rename(run_dir, trash)  # the commit point: from here on the run is gone
    finally:
        lock.release()  # its file went with the folder: this only lets go of the lock
    shutil.rmtree(trash, ignore_errors=True)
    clean_trash(ws.runs_dir)
    return DeleteResult(run, freed, kept, files, names)


@contextlib.contextmanager
def _registry_locked(ws: Workspace):  # type: ignore[no-untyped-def]
    """The registry's entries, read and held under its lock (no lock when there is none)."""
    if not ws.registry_path.is_file():
        yield []
        return
    registry = ModelRegistry(ws)
    with registry.transaction() as models:  # unchanged: nothing is written back
        yield list(models.values())
