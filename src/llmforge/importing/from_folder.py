"""Gathering a local Hugging Face format folder into an import's staging folder, with the
same checks as a hub import (architecture, size, license, weights).
"""

from __future__ import annotations

from pathlib import Path

from llmforge.errors import InvalidSourceError
from llmforge.importing import file_selection
from llmforge.importing.gather import Candidate, check_selection, consent, finish, is_pickled
from llmforge.importing.licensing import read_license
from llmforge.importing.plan import (
    ImportHooks,
    ImportRequest,
    ImportResult,
    check_architecture,
    read_config,
)
from llmforge.importing.source import Source
from llmforge.importing.undo import ImportWork
from llmforge.store import blobs
from llmforge.store.registry import FileRecord
from llmforge.workspace import Workspace, resolve_inside


def gather_from_folder(
    ws: Workspace,
    source: Source,
    req: ImportRequest,
    name: str,
    work: ImportWork,
    hooks: ImportHooks,
) -> ImportResult:
    """Check and copy a local Hugging Face format folder into the import's staging folder.

    Returns:
        The result holding the entry to register.
    """
    folder = source.path
    assert folder is not None
    if req.revision:
        raise InvalidSourceError(
            "--revision applies to hub repositories, not to a local folder.",
            "Leave out --revision, or import from the hub.",
        )
    files = [
        file_selection.RemoteFile(path=p.name, size=p.stat().st_size)
        for p in sorted(folder.iterdir())
        if p.is_file()
    ]
    sel = file_selection.select_files(files)
    check_selection(sel, f"The folder {folder}")
    config = read_config(folder / "config.json", str(folder))
    arch = check_architecture(config, f"The folder {folder}")
    lic_files = sorted(f.path for f in sel.files if file_selection.is_license_file(f.path))
    readme = folder / "README.md"
    info = read_license(
        readme if readme.is_file() else None, folder / lic_files[0] if lic_files else None
    )
    cand = Candidate(str(folder), None, "local", arch, sel, config, info, str(folder))
    # Nothing to download, but every file is copied into the blob store.
    staging, accepted_at = consent(
        ws, req, name, work, hooks, cand, download_bytes=0, new_bytes=sel.total_bytes
    )
    records: dict[str, FileRecord] = {}
    pickled: dict[str, Path] = {}
    for f in sel.files:
        hooks.on_file_start(f.path, f.size)
        if is_pickled(f.path, sel):
            pickled[f.path] = folder / f.path
        else:
            digest = blobs.adopt(ws, folder / f.path, resolve_inside(staging, f.path))
            records[f.path] = FileRecord(size=f.size, sha256=digest)
        hooks.on_bytes(f.size)
        hooks.on_file_done(f.path, False)
    entry = finish(ws, name, cand, staging, records, pickled, accepted_at, hooks, {})
    return ImportResult(entry)
