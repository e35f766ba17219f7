"""Small filesystem helpers: atomic writes of a file or a whole folder, what a failed write
means, hashing, human-readable sizes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmforge.untrusted import brief

_CHUNK = 1 << 20  # 1 MiB: large enough to keep hashing I/O-bound, small enough for memory
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# safetensors (Rust) and torch wrap I/O errors in their own exception types: their text says it.
_DISK_FULL_TEXTS = ("No space left", "File too large", "Disk quota", "os error 27", "os error 28")


def fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk so a rename inside it survives a crash."""
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half.

    The bytes go to a temporary file in the same directory, are fsynced, and the file is
    renamed over ``path``.

    Args:
        path: The destination file.
        data: The full new content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600: keep the old file's mode, else the usual 0666 - umask.
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON with a trailing newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folder itself, to disk."""
    for f in iter_files(folder):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(folder)


def publish_folder(tmp: Path, final: Path, old: Path, *, sync: bool = True) -> None:
    """Rename the finished folder ``tmp`` to ``final``, so readers see the old or the new one.

    An existing ``final`` is first renamed to ``old`` and deleted once the new folder is in
    place (put back if that rename fails), so no moment leaves neither. ``tmp`` and ``old``
    must sit beside ``final`` (a rename within one filesystem is atomic) under hidden names.

    Args:
        tmp: The complete new folder.
        final: Where it belongs.
        old: Where an existing ``final`` waits while it is replaced.
        sync: Flush ``tmp``'s files to disk first, so a power cut cannot leave a renamed
            folder with empty files (checkpoints; an export is a copy the user can redo).
    """
    if sync:
        fsync_tree(tmp)
    if os.path.lexists(final):
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if os.path.lexists(old) and not os.path.lexists(final):
                os.replace(old, final)  # put the previous folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def building_folder(final: Path, tmp: Path, old: Path, *, sync: bool = True) -> Iterator[Path]:
    """Build a folder at ``tmp`` and make it ``final`` when the block ends without an error.

    The one way llmforge writes a folder that must appear whole or not at all (a checkpoint,
    an export): what an earlier attempt left at ``tmp`` is removed, the block fills the fresh
    ``tmp``, and :func:`publish_folder` renames it into place. On an exception ``tmp`` is
    removed and ``final`` is as it was.

    Yields:
        The empty folder ``tmp``.
    """
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        publish_folder(tmp, final, old, sync=sync)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_disk_full(e: BaseException) -> bool:
    """Whether a failed write means a full disk, a quota or a file-size limit."""
    if isinstance(e, OSError):
        return e.errno in DISK_FULL_ERRNOS
    return any(t in str(e) for t in _DISK_FULL_TEXTS)


def failure_cause(e: BaseException) -> str:
    """What the operating system (or the library that wrapped its error) said, for a message."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return brief(str(e), 200).strip("'\"")


def write_failure_reason(e: BaseException) -> str:
    """Why a write failed, for a message: the OS's words, and whether the disk may be full."""
    hint = " (is the disk full, or a file-size limit reached?)" if is_disk_full(e) else ""
    return failure_cause(e) + hint


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def iter_files(root: Path) -> Iterator[Path]:
    """Yield every regular file under ``root`` (sorted, relative order stable)."""
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            yield p


def human_bytes(n: int | None) -> str:
    """Format a byte count for people: ``1.5 GB``, ``980 KB``; ``-`` for None."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover - loop always returns


def human_count(n: int | None) -> str:
    """Format a parameter count for people: ``494.0M``, ``1.5B``; ``-`` for None."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)
