"""Checkpoint references: a checkpoint folder, a run (its latest checkpoint), ``RUN/step-N``,
``RUN/N`` or ``RUN/latest``, resolved to a checkpoint folder.

No training machinery is imported, so loading a checkpoint for generation, registration or
export stays light.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from llmforge.checkpoints.layout import (
    CHECKPOINTS,
    META_FILE,
    latest_checkpoint,
    list_checkpoints,
    step_dirname,
)
from llmforge.errors import CheckpointError
from llmforge.untrusted import brief
from llmforge.workspace import Workspace


def resolve_checkpoint(workspace: Workspace, ref: str, runs_dir: Path | None = None) -> Path:
    """Turn a checkpoint reference into a checkpoint directory.

    ``ref`` may be a checkpoint directory, a run directory (its latest checkpoint), a run
    name, ``RUN/step-200`` / ``RUN/200``, or ``RUN/latest``.

    Raises:
        CheckpointError: If nothing matches, or the run has no complete checkpoint.
    """
    runs = runs_dir or workspace.runs_dir
    candidates = [Path(ref).expanduser()]
    run, _, sub = ref.partition("/")
    if not Path(ref).is_absolute():
        candidates.append(runs / ref)
        if sub:
            digits = sub.removeprefix("step-")
            numeric = digits.isascii() and digits.isdigit() and len(digits) <= 12
            name = step_dirname(int(digits)) if numeric else sub
            candidates.append(runs / run / CHECKPOINTS / name)
    for c in candidates:
        if c.name == "latest":
            c = c.parent.parent if c.parent.name == CHECKPOINTS else c.parent
        try:
            is_ckpt, is_run = (c / META_FILE).is_file(), (c / CHECKPOINTS).is_dir()
        except OSError:  # a name too long for the filesystem matches nothing
            continue
        if is_ckpt:
            return c
        if is_run:
            latest = latest_checkpoint(c)
            if latest is None:
                raise CheckpointError(
                    f"The run {c} has no complete checkpoint.",
                    "Train it first, or pick another run (`llmforge ckpt list`).",
                )
            return latest
    if sub and not Path(ref).is_absolute() and (runs / run / CHECKPOINTS).is_dir():
        raise missing_step_error(runs / run, sub)

    from llmforge.untrusted import brief

    raise CheckpointError(
        f"No checkpoint matches {brief(ref, 200)}.",
        "Give a checkpoint directory, a run name (its latest checkpoint) or RUN/step-N; "
        "`llmforge ckpt list` shows them.",
    )


def missing_step_error(run_dir: Path, wanted: str) -> CheckpointError:
    """The error for ``RUN/WANTED`` when the run exists: it names the run's checkpoints."""
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(run_dir)]
    run = run_dir.name
    if not steps:
        return CheckpointError(
            f"The run {run!r} has no complete checkpoint.",
            "Train it first, or pick another run (`llmforge ckpt list`).",
        )
    shown = ", ".join(map(str, steps[-10:]))
    more = f" (and {len(steps) - 10} earlier)" if len(steps) > 10 else ""
    digits = wanted.removeprefix("step-")
    # int() of more than 4,300 digits raises (CVE-2020-10735's limit): no step is that long.
    numeric = digits.isdigit() and len(digits) <= 18
    what = f"at step {int(digits)}" if numeric else brief(wanted)
    have = (
        f"its checkpoints are at steps {shown}{more}"
        if len(steps) > 1
        else f"its one checkpoint is at step {shown}"
    )
    return CheckpointError(
        f"The run {run!r} has no checkpoint {what}; {have}.",
        f"Use e.g. {run}/step-{steps[-1]} (the latest, or just {run}); "
        f"`llmforge ckpt list {run}` lists them.",
    )


def workspace_relative(ws: Workspace, path: Path) -> str:
    """``path`` relative to the workspace (as a registry entry records its checkpoint), or as
    it is when it lies elsewhere."""
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(ws.root.resolve()).as_posix()
    return str(path)
