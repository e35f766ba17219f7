"""A registered model's files: their manifest (size and sha256 of each), validating a model
against it, and the quick check before a model is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmforge.errors import ModelFilesMissingError, UnsafePathError
from llmforge.fsutil import iter_files, sha256_file
from llmforge.store.registry import FileRecord, ModelEntry, ModelRegistry
from llmforge.store.safetensors_header import safetensors_problem
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
