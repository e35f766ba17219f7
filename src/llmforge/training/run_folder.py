"""A run's folder, ``<workspace>/<output_dir>/<run_name>``, checked before anything is written."""

from __future__ import annotations

from pathlib import Path

from llmforge.config import TrainingConfig
from llmforge.errors import ConfigError, WorkspaceError
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
