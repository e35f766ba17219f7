"""Where runs and checkpoints are: a run's folder, and checkpoint references.

Kept apart from ``training/run.py`` (setting a run up) so that loading a checkpoint for
generation, registration or export does not import the training machinery.
"""

from __future__ import annotations

from pathlib import Path

from llmforge.config import TrainingConfig
from llmforge.errors import CheckpointError, ConfigError, WorkspaceError
from llmforge.training import checkpoint as ck
from llmforge.workspace import Workspace

DEFAULT_RUN_NAME = "default"
# Longest path a run folder may have: its checkpoints' files sit ~60 characters below it, and
# Linux refuses paths over 4096 bytes (ENAMETOOLONG) and names over 255.
_MAX_RUN_PATH = 3800


def run_dir_for(workspace: Workspace, cfg: TrainingConfig) -> Path:
    """``<workspace>/<output_dir>/<run_name>``, checked before anything is written.

    ``output_dir`` must resolve inside the workspace (where ``ckpt``, ``generate`` and the
    registry find runs), and nothing on the way may be a file.

    Raises:
        UnsafePathError: ``output_dir`` is outside the workspace.
        ConfigError: The path is too long for the filesystem.
        WorkspaceError: ``output_dir`` (or the run's folder) exists but is not a folder.
    """
    from llmforge.untrusted import brief

    if len(cfg.output_dir.encode("utf-8")) > _MAX_RUN_PATH or any(
        len(part.encode("utf-8")) > 255 for part in Path(cfg.output_dir).parts
    ):
        raise ConfigError(
            f"output_dir {brief(cfg.output_dir, 80)} is too long for a folder path.",
            "Use a short folder inside the workspace (the default is runs).",
        )
    base = workspace.inside(cfg.output_dir, "output_dir")
    # the run folder itself may be a symlink pointing elsewhere: it must stay inside too
    run_dir = workspace.inside(base / (cfg.run_name or DEFAULT_RUN_NAME), "the run folder")
    if len(str(run_dir).encode("utf-8")) > _MAX_RUN_PATH:
        raise ConfigError(
            f"The run folder {brief(str(run_dir), 80)} would be too long a path.",
            "Use a shorter output_dir or run_name.",
        )
    for folder in (run_dir, base, *base.parents):
        if folder.exists() and not folder.is_dir():
            raise WorkspaceError(
                f"{folder} is a file, but the run needs it to be a folder "
                f"({'the run' if folder == run_dir else 'output_dir'}: {run_dir}).",
                "Move that file away, or set output_dir to another folder inside the workspace.",
            )
        if folder == workspace.root:
            break
    return run_dir


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
            name = ck.step_dirname(int(digits)) if numeric else sub
            candidates.append(runs / run / ck.CHECKPOINTS / name)
    for c in candidates:
        if c.name == "latest":
            c = c.parent.parent if c.parent.name == ck.CHECKPOINTS else c.parent
        try:
            is_ckpt, is_run = (c / ck.META_FILE).is_file(), (c / ck.CHECKPOINTS).is_dir()
        except OSError:  # a name too long for the filesystem matches nothing
            continue
        if is_ckpt:
            return c
        if is_run:
            latest = ck.latest_checkpoint(c)
            if latest is None:
                raise CheckpointError(
                    f"The run {c} has no complete checkpoint.",
                    "Train it first, or pick another run (`llmforge ckpt list`).",
                )
            return latest
    if sub and not Path(ref).is_absolute() and (runs / run / ck.CHECKPOINTS).is_dir():
        raise missing_step_error(runs / run, sub)

    from llmforge.untrusted import brief

    raise CheckpointError(
        f"No checkpoint matches {brief(ref, 200)}.",
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
