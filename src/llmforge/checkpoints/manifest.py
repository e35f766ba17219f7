"""Checkpoint manifests: every file of a checkpoint with its size and sha256.

A checkpoint's ``manifest.json`` is written when it is saved (by
:func:`llmforge.training.checkpointing.publish`, just before the folder is renamed into place),
like a registry entry's ``files``::

    {"format": 1, "files": {"model.safetensors": {"size": 66120, "sha256": "9f2c..."}, ...}}

Checkpoint files can be hard links shared with registered models (``ckpt register`` links them
and makes them read-only), so one in-place edit would change both. The manifest makes such a
change, a truncation or an added file visible:

- on every load (``generate``, ``--resume``, ``ckpt info``, ``--init-from``): sizes of every
  file, sha256 of the small ones (JSON state, configs, most tokenizer files: under
  :data:`ALWAYS_HASH_BYTES`), and no unlisted files. This costs a ``stat`` per file and
  reading well under a megabyte, so loading stays as fast as before;
- where a checkpoint's bytes are handed on or vouched for (``models validate``, ``ckpt
  register``, ``ckpt export``): the full sha256 of every file, since the weights' bytes are
  then copied, linked into a model, or declared intact.

Checkpoints written before manifests existed have none: they load as before and are reported
as *unverified*, never refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmforge.errors import CheckpointDamagedError, UnsafePathError
from llmforge.fsutil import atomic_write_json, iter_files, sha256_file
from llmforge.untrusted import load_json
from llmforge.workspace import resolve_inside

MANIFEST_FILE = "manifest.json"
FORMAT = 1
ALWAYS_HASH_BYTES = 1 << 20


def write_manifest(folder: Path) -> dict[str, dict[str, int | str]]:
    """Record size and sha256 of every file under ``folder`` in ``folder/manifest.json``.

    Called on the finished temporary folder of a save; the files were just written, so they
    are read back from the page cache.

    Returns:
        The recorded files.
    """
    files: dict[str, dict[str, int | str]] = {}
    for p in iter_files(folder):
        rel = p.relative_to(folder).as_posix()
        if rel != MANIFEST_FILE:
            files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    atomic_write_json(folder / MANIFEST_FILE, {"format": FORMAT, "files": files})
    return files


@dataclass
class ManifestCheck:
    """What comparing a checkpoint with its manifest found.

    Attributes:
        path: The checkpoint.
        has_manifest: False for a checkpoint saved before manifests (then nothing is checked).
        files_checked: Files compared.
        full: Whether every file's sha256 was compared (else only the small files').
        problems: One phrase per difference; empty means intact (or unverified).
    """

    path: Path
    has_manifest: bool = True
    files_checked: int = 0
    full: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing differs from the manifest."""
        return not self.problems

    @property
    def status(self) -> str:
        """A short phrase for ``ckpt info`` and ``models validate``."""
        if not self.has_manifest:
            return "unverified: saved before checkpoints had a manifest"
        if self.problems:
            return "DAMAGED: " + "; ".join(self.problems)
        what = "sha256 of every file" if self.full else "sizes, and sha256 of the small files"
        return f"intact ({self.files_checked} files; checked {what})"


def check_manifest(path: Path, *, full: bool = False) -> ManifestCheck:
    """Compare a checkpoint's files with its manifest.

    Args:
        path: The checkpoint directory.
        full: Compare the sha256 of every file (slow for big weights), not only the sizes
            and the small files' sha256.

    Returns:
        The findings; never raises for a difference.
    """
    check = ManifestCheck(path, full=full)
    try:
        raw = (path / MANIFEST_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        check.has_manifest = False
        return check
    except OSError as e:
        check.problems.append(f"{MANIFEST_FILE} cannot be read ({e.strerror})")
        return check
    except UnicodeDecodeError:
        check.problems.append(f"{MANIFEST_FILE} is not a valid manifest (not UTF-8 text)")
        return check
    try:
        files = load_json(raw)["files"]
        records = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        check.problems.append(f"{MANIFEST_FILE} is not a valid manifest")
        return check
    for rel, (size, digest) in sorted(records.items()):
        check.files_checked += 1
        try:
            p = resolve_inside(path, rel)
        except UnsafePathError:
            check.problems.append(f"{MANIFEST_FILE} lists {rel!r}, a path outside the checkpoint")
            continue
        if not p.is_file():
            check.problems.append(f"{rel} is missing")
        elif (actual := p.stat().st_size) != size:
            check.problems.append(f"{rel} has {actual:,} bytes, the manifest records {size:,}")
        elif (full or size <= ALWAYS_HASH_BYTES) and sha256_file(p) != digest:
            check.problems.append(f"{rel} was changed (its sha256 differs from the manifest)")
    for p in iter_files(path):
        rel = p.relative_to(path).as_posix()
        # Hidden files (an editor's swap file, .DS_Store) are never loaded; anything else is.
        hidden = any(part.startswith(".") for part in rel.split("/"))
        if rel not in records and rel != MANIFEST_FILE and not hidden:
            check.problems.append(f"{rel} was added after the checkpoint was saved")
    return check


def require_intact(path: Path, *, full: bool = False) -> ManifestCheck:
    """:func:`check_manifest`, raising if anything differs.

    Raises:
        CheckpointDamagedError: Naming the checkpoint and the files that differ (exit code 3).
    """
    check = check_manifest(path, full=full)
    if check.problems:
        shown = "; ".join(check.problems[:5]) + ("; ..." if len(check.problems) > 5 else "")
        raise CheckpointDamagedError(
            f"The checkpoint {path} is damaged or was changed after it was saved: {shown}.",
            "Use another checkpoint of the run (`llmforge ckpt list` shows them). If you changed "
            f"it on purpose, delete its {MANIFEST_FILE} to use it unverified.",
        )
    return check
