"""Where llmforge keeps its files: the workspace and the paths inside it.

The workspace is ``--home`` when given, else ``$LLMFORGE_HOME``, else the current directory.
Inside it live ``models/`` (the registry and model folders) and ``runs/`` (training runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmforge.errors import UnsafePathError, WorkspaceError

HOME_ENV = "LLMFORGE_HOME"


@dataclass(frozen=True)
class Workspace:
    """The resolved paths of one workspace.

    Attributes:
        root: The workspace directory (absolute).
    """

    root: Path

    @property
    def models_dir(self) -> Path:
        """The folder holding ``registry.json`` and one folder per model."""
        return self.root / "models"

    @property
    def registry_path(self) -> Path:
        """The registry file."""
        return self.models_dir / "registry.json"

    @property
    def runs_dir(self) -> Path:
        """The folder holding one folder per training run."""
        return self.root / "runs"

    def model_path(self, local_path: str) -> Path:
        """Resolve a registry entry's ``local_path`` safely inside ``models/``.

        Args:
            local_path: A path relative to ``models/`` as stored in the registry.

        Returns:
            The absolute path.

        Raises:
            UnsafePathError: If the path is absolute or escapes ``models/`` (``..``, symlinks).
        """
        return resolve_inside(self.models_dir, local_path)

    def inside(self, path: str | os.PathLike[str], what: str) -> Path:
        """Resolve a path a user or a config supplied and refuse it unless it is in the workspace.

        The one check for every path llmforge will write to on someone's word (``output_dir``,
        an export's temporary folder, a run folder): relative paths are taken from the
        workspace root, symlinks are resolved, and the result must be the root or below it.

        Args:
            path: The path as given (absolute, or relative to the workspace).
            what: What the path is for, for the message (``"output_dir"``).

        Returns:
            The absolute, resolved path.

        Raises:
            UnsafePathError: If the path resolves outside the workspace.
        """
        raw = Path(path).expanduser()
        target = (raw if raw.is_absolute() else self.root / raw).resolve()
        if target != self.root and self.root not in target.parents:
            raise UnsafePathError(
                f"{what} {str(path)!r} is outside the workspace {self.root}; llmforge only "
                "writes inside its workspace, where `ckpt`, `generate` and `models` can find it.",
                f"Use a path inside {self.root} (relative paths are taken from there), or make "
                "the other folder the workspace with --home.",
            )
        return target


def resolve_inside(base: Path, relative: str) -> Path:
    """Join ``relative`` onto ``base`` and refuse anything that lands outside ``base``.

    Args:
        base: The directory that must contain the result.
        relative: A relative path taken from a file the user or a download could edit.

    Returns:
        The absolute joined path (symlinks resolved).

    Raises:
        UnsafePathError: If ``relative`` is absolute or the result is outside ``base``.
    """
    if not relative or Path(relative).is_absolute():
        raise UnsafePathError(
            f"The recorded path {relative!r} is absolute or empty; llmforge only follows "
            f"paths inside {base}.",
            "Fix or remove the entry that records it (for a model: `llmforge models delete`).",
        )
    base_resolved = base.resolve()
    target = (base_resolved / relative).resolve()
    if target != base_resolved and base_resolved not in target.parents:
        raise UnsafePathError(
            f"The recorded path {relative!r} points outside {base} (through '..' or a symlink).",
            "llmforge never reads or writes outside the workspace; fix or remove the entry "
            "that records it.",
        )
    return target


def resolve_workspace(home: str | os.PathLike[str] | None = None) -> Workspace:
    """Find the workspace from ``home``, ``$LLMFORGE_HOME`` or the current directory.

    Args:
        home: An explicit workspace directory (the ``--home`` option), or None.

    Returns:
        The workspace. The directory must exist; ``models/`` and ``runs/`` are created lazily.

    Raises:
        WorkspaceError: If the chosen directory does not exist or is not a directory.
    """
    raw = home if home is not None else os.environ.get(HOME_ENV) or os.getcwd()
    root = Path(raw).expanduser()
    origin = "--home" if home is not None else (HOME_ENV if os.environ.get(HOME_ENV) else "cwd")
    if not root.exists():
        raise WorkspaceError(
            f"The workspace directory {root} (from {origin}) does not exist.",
            "Create it first, or point --home / LLMFORGE_HOME at an existing directory.",
        )
    if not root.is_dir():
        raise WorkspaceError(
            f"The workspace {root} (from {origin}) is not a directory.",
            "Point --home / LLMFORGE_HOME at a directory.",
        )
    return Workspace(root=root.resolve())
