"""Operations on registered models and their files: manifests, validation, deletion."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmforge.errors import ModelFilesMissingError, UnsafePathError
from llmforge.folder_commit import FolderChange
from llmforge.fsutil import iter_files, sha256_file
from llmforge.model_users import ModelUsers, find_users
from llmforge.registry import FileRecord, ModelEntry, ModelRegistry, not_found_error
from llmforge.store import prune_cache, unshared_bytes
from llmforge.training.ckpt_manifest import ManifestCheck, check_manifest, checkpoint_dirs
from llmforge.weights import safetensors_problem
from llmforge.workspace import Workspace, resolve_inside


def build_manifest(folder: Path) -> dict[str, FileRecord]:
    """Record size and sha256 of every file under ``folder`` (POSIX relative names)."""
    return {
        p.relative_to(folder).as_posix(): FileRecord(size=p.stat().st_size, sha256=sha256_file(p))
        for p in iter_files(folder)
    }


@dataclass
class ValidationReport:
    """What validating one model found.

    Attributes:
        model_name: The model checked.
        files_checked: How many recorded files were looked at.
        problems: One sentence per problem; empty means the model is intact.
    """

    model_name: str
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def validate_entry(
    workspace: Workspace, entry: ModelEntry, *, hashes: bool = True
) -> ValidationReport:
    """Check that every recorded file exists with its recorded size and sha256.

    Args:
        workspace: The workspace the entry belongs to.
        entry: The registry entry.
        hashes: Also compare sha256 (slow for big models); sizes are always compared.

    Returns:
        The report; never raises for a missing folder or file, it reports them.
    """
    report = ValidationReport(entry.model_name)
    try:
        folder = workspace.model_path(entry.local_path)
    except UnsafePathError as e:
        report.problems.append(e.message)
        return report
    if not folder.is_dir():
        report.problems.append(f"its folder models/{entry.local_path} is missing")
        return report
    if not entry.files:
        report.problems.append("the registry records no files for it")
    for name, record in sorted(entry.files.items()):
        report.files_checked += 1
        try:
            path = resolve_inside(folder, name)
        except UnsafePathError as e:
            report.problems.append(e.message)
            continue
        if not path.is_file():
            report.problems.append(f"{name} is missing")
        elif (size := path.stat().st_size) != record.size:
            report.problems.append(f"{name} has {size} bytes, the registry records {record.size}")
        elif hashes and sha256_file(path) != record.sha256:
            report.problems.append(f"{name} does not match its recorded sha256 (corrupted)")
        elif name.endswith(".safetensors") and (bad := safetensors_problem(path)) is not None:
            report.problems.append(f"{name} is not a valid safetensors file: {bad}")
    return report


def require_model_files(workspace: Workspace, entry: ModelEntry) -> Path:
    """Return the model's folder after a quick check (existence and sizes) of its files.

    Raises:
        ModelFilesMissingError: If the folder or a recorded file is missing or resized.
    """
    report = validate_entry(workspace, entry, hashes=False)
    if not report.ok:  # a delete or import killed half-way may hold the folder: settle it
        ModelRegistry(workspace).settle()
        report = validate_entry(workspace, entry, hashes=False)
    if not report.ok:
        raise ModelFilesMissingError(
            f"The files of model {entry.model_name!r} are not intact: "
            + "; ".join(report.problems[:5])
            + ("; ..." if len(report.problems) > 5 else "")
            + ".",
            f"Run `llmforge models validate {entry.model_name}` for the full report, then "
            "re-import the model (`llmforge models import ... --force`).",
        )
    return workspace.model_path(entry.local_path)


def validate_models(workspace: Workspace, name: str | None = None) -> list[ValidationReport]:
    """Validate one model (by name) or every registered model.

    Raises:
        ModelNotFoundError: If ``name`` is given and unknown.
    """
    registry = ModelRegistry(workspace)
    registry.settle()  # finish or undo what a killed delete or import left
    entries = [registry.get(name)] if name is not None else registry.list()
    return [validate_entry(workspace, e) for e in entries]


def validate_checkpoints(workspace: Workspace) -> list[ManifestCheck]:
    """Compare every checkpoint under ``runs/`` with its manifest, sha256 of every file.

    Checkpoints saved before manifests existed are reported as unverified (``has_manifest``
    False), not as failures.
    """
    return [check_manifest(p, full=True) for p in checkpoint_dirs(workspace.runs_dir)]


@dataclass
class DeleteResult:
    """What deleting a model did.

    Attributes:
        entry: The removed registry entry.
        bytes_freed: Bytes of files removed from disk (hard-linked files that something else
            still holds are not freed).
        users: What depended on it (see :mod:`llmforge.model_users`); ``users.broken`` lists
            what can no longer load (only after ``force``).
    """

    entry: ModelEntry
    bytes_freed: int
    users: ModelUsers


def model_users(workspace: Workspace, name: str) -> ModelUsers:
    """What depends on the model ``name`` (a preview for the confirmation; no lock).

    Raises:
        ModelNotFoundError: If there is no such model.
    """
    models = {e.model_name: e for e in ModelRegistry(workspace).list()}
    if name not in models:
        raise not_found_error(name, sorted(models))
    return find_users(workspace, name, models)


def delete_model(workspace: Workspace, name: str, *, force: bool = False) -> DeleteResult:
    """Remove a model's registry entry and its folder ``models/<name>``, all or nothing.

    Under the registry lock the folder is renamed into ``models/.trash/`` and the entry is
    removed (:mod:`llmforge.folder_commit`); the files are deleted after the lock is released.
    A concurrent import of the same name therefore never loses its new folder, and a kill at
    any point leaves either the model whole and registered or gone (its trash is removed by
    the next command that takes the lock).

    Args:
        workspace: The workspace.
        name: The model.
        force: Delete even if LoRA adapters or checkpoints load onto it.

    Raises:
        ModelNotFoundError: If there is no such model.
        ModelInUseError: If something can no longer load without it and ``force`` is False.
        RegistryError: If the registry cannot be written (nothing changes then).
    """
    registry = ModelRegistry(workspace)
    with registry.transaction() as models:
        if name not in models:
            raise not_found_error(name, sorted(models))
        users = find_users(workspace, name, models)
        if users.broken and not force:
            raise users.in_use_error()
        entry = models.pop(name)
        assert registry.digest is not None
        change = FolderChange(workspace, name, registry.digest, moves_in=False)
        registry.undo_on_failure(change.undo)
        change.move_old_aside()
    # Files still linked from the import cache or a checkpoint are not freed by this; the
    # cache prune below frees the blobs no model uses any more.
    freed = 0 if change.old.is_symlink() or not change.old.exists() else unshared_bytes(change.old)
    change.finish()
    registry.tidy_trash()
    freed += prune_cache(workspace)
    return DeleteResult(entry, freed, users)
