"""Where runs and checkpoints are: a run's folder, and checkpoint references.

Kept apart from ``training/run.py`` (setting a run up) so that loading a checkpoint for
generation, registration or export does not import the training machinery.
"""

from __future__ import annotations

from pathlib import Path

from llmforge.config import TrainingConfig
from llmforge.errors import CheckpointError
from llmforge.training import checkpoint as ck
from llmforge.workspace import Workspace

DEFAULT_RUN_NAME = "default"


def run_dir_for(workspace: Workspace, cfg: TrainingConfig) -> Path:
    """``<workspace>/<output_dir>/<run_name>``."""
    out = Path(cfg.output_dir).expanduser()
    base = out if out.is_absolute() else workspace.root / out
    return base / (cfg.run_name or DEFAULT_RUN_NAME)


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
            name = ck.step_dirname(int(digits)) if digits.isdigit() else sub
            candidates.append(runs / run / ck.CHECKPOINTS / name)
    for c in candidates:
        if c.name == "latest":
            c = c.parent.parent if c.parent.name == ck.CHECKPOINTS else c.parent
        if (c / ck.META_FILE).is_file():
            return c
        if (c / ck.CHECKPOINTS).is_dir():
            latest = ck.latest_checkpoint(c)
            if latest is None:
                raise CheckpointError(
                    f"The run {c} has no complete checkpoint.",
                    "Train it first, or pick another run (`llmforge ckpt list`).",
                )
            return latest
    if sub and not Path(ref).is_absolute() and (runs / run / ck.CHECKPOINTS).is_dir():
        raise missing_step_error(runs / run, sub)
    raise CheckpointError(
        f"No checkpoint matches {ref!r}.",
        "Give a checkpoint directory, a run name (its latest checkpoint) or RUN/step-N; "
        "`llmforge ckpt list` shows them.",
    )


def missing_step_error(run_dir: Path, wanted: str) -> CheckpointError:
    """The error for ``RUN/WANTED`` when the run exists: it names the run's checkpoints."""
    steps = [int(p.name.split("-")[1]) for p in ck.list_checkpoints(run_dir)]
    run = run_dir.name
    if not steps:
        return CheckpointError(
            f"The run {run!r} has no complete checkpoint.",
            "Train it first, or pick another run (`llmforge ckpt list`).",
        )
    shown = ", ".join(map(str, steps[-10:]))
    more = f" (and {len(steps) - 10} earlier)" if len(steps) > 10 else ""
    digits = wanted.removeprefix("step-")
    what = f"at step {int(digits)}" if digits.isdigit() else repr(wanted)
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
