"""Where imported files live on disk, and how two models share them.

Layout under ``models/`` (hidden folders are never models)::

    models/.cache/hub/       huggingface_hub's own cache (``cache_dir``): blobs named by
                             etag (git sha1, or sha256 for LFS files), snapshots per commit
    models/.cache/blobs/     a sha256-named store for files that did not come from the hub
                             (local imports, safetensors converted from pickles)
    models/.staging/         an import's work folder; renamed to ``models/<name>/`` when done
    models/<name>/           the model: every file is a hard link to a blob above

Caching: because downloads go through huggingface_hub's cache with the resolved commit sha,
importing the same ``model_id@revision`` again sends no file request at all. Dedup: a model
folder holds hard links, so two names for the same weights (or a re-import) use the disk
once; shared files are read-only, so no in-place edit changes them all. Deleting a model
removes its folder and then prunes every cached blob whose link count dropped to 1 (only
the cache still holds it): exactly the bytes no other model uses. Where hard links are
impossible, files are copied (correct, just without sharing).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from llmforge.workspace import Workspace

CACHE = ".cache"
STAGING = ".staging"
_CHUNK = 1 << 20
STALE_STAGING_S = 24 * 3600


def hub_cache_dir(ws: Workspace) -> Path:
    """The huggingface_hub cache folder of the workspace."""
    return ws.models_dir / CACHE / "hub"


def blob_dir(ws: Workspace) -> Path:
    """The sha256-named blob store for files that did not come from the hub."""
    return ws.models_dir / CACHE / "blobs"


def _owner_gone(folder: Path) -> bool:
    """Whether the import that made ``folder`` (named ``NAME.PID.RANDOM``) is no longer running.

    Folders without a readable PID (older naming) count as gone once a day old.
    """
    parts = folder.name.removesuffix(".old").split(".")  # NAME.PID.RANDOM[.old]
    pid = parts[-2] if len(parts) >= 3 else ""
    if not pid.isdigit():
        return folder.lstat().st_mtime < time.time() - STALE_STAGING_S
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by someone else
    return False


def clean_stale_staging(ws: Workspace) -> int:
    """Delete work folders of imports that were killed; return how many were removed."""
    base = ws.models_dir / STAGING
    if not base.is_dir():
        return 0
    removed = 0
    for old in base.iterdir():
        with contextlib.suppress(OSError):
            if _owner_gone(old):
                discard(old)
                removed += 1
    return removed


def new_staging_dir(ws: Workspace, name: str) -> Path:
    """Create a fresh, private work folder ``models/.staging/NAME.PID.RANDOM`` for an import.

    A normal failure or Ctrl-C removes its own folder; folders left by a killed import (its
    process is gone) are deleted on the way. The PID in the name tells them apart from the
    folder of an import running concurrently in another process.
    """
    base = ws.models_dir / STAGING
    base.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(ws)
    return Path(tempfile.mkdtemp(prefix=f"{name}.{os.getpid()}.", dir=base))


def make_read_only(path: Path) -> None:
    """Clear the write bits of a shared file (every hard link to it shares the mode).

    A file shared by hard link between models, the cache and a checkpoint is one file: an
    in-place edit (``>>``, an editor that keeps links) through any name would change all of
    them. Deleting, renaming and replacing it still work (they need the folder's write bit).
    """
    with contextlib.suppress(OSError):  # another user's file, a filesystem without modes
        mode = os.stat(path).st_mode
        if mode & 0o222:
            os.chmod(path, mode & ~0o222)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a read-only hard link to the file behind ``src`` (symlinks followed), else
    a read-only copy."""
    real = src.resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(real, dst)
    except OSError:
        shutil.copyfile(real, dst)
    make_read_only(dst)


def hash_file(path: Path) -> tuple[str, str]:
    """Return ``(sha256, git blob sha1)`` of a file in one pass over its bytes."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def adopt(ws: Workspace, src: Path, dst: Path, *, move: bool = False) -> str:
    """Put a file into the sha256 blob store and make ``dst`` a link to it.

    Args:
        ws: The workspace.
        src: The file's current location.
        dst: Where the model folder needs it.
        move: ``src`` is our own temporary file and may be moved rather than copied.

    Returns:
        The file's sha256.
    """
    digest, _ = hash_file(src)
    blobs = blob_dir(ws)
    blobs.mkdir(parents=True, exist_ok=True)
    blob = blobs / digest
    if not blob.is_file():
        tmp = blobs / f".{digest}.{os.getpid()}.tmp"
        try:
            if move:
                os.replace(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            make_read_only(tmp)
            os.replace(tmp, blob)
        except BaseException:  # a full disk: no half copy left in the store
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
    if dst.exists() and dst.samefile(blob):
        return digest
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    link_or_copy(blob, dst)
    return digest


def unshared_bytes(folder: Path) -> int:
    """Bytes under ``folder`` held by files with no other hard link (what deleting frees)."""
    total = 0
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if st.st_nlink <= 1:
                total += st.st_size
    return total


USE_LOCK = ".in-use.lock"


@contextlib.contextmanager
def _flock(ws: Workspace, exclusive: bool) -> Iterator[bool]:
    """Hold ``models/.cache/.in-use.lock`` shared, or try to take it exclusively at once.

    Yields:
        Whether the lock is held (a non-blocking exclusive attempt can fail).
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no coordination, pruning proceeds
        yield True
        return
    path = ws.models_dir / CACHE / USE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def cache_in_use(ws: Workspace) -> Iterator[None]:
    """Mark the cache as in use by an import (shared with other imports) while the block runs.

    Blobs an import has downloaded or chosen to reuse are not linked into a model folder until
    it commits; until then they look unused. :func:`prune_cache` therefore does nothing while
    any import holds this, instead of deleting a blob from under it.
    """
    with _flock(ws, exclusive=False):
        yield


def cache_idle(ws: Workspace) -> contextlib.AbstractContextManager[bool]:
    """Hold the cache exclusively if no import is using it; yields whether it is held.

    For taking back what a refused import added to the cache: never while another import
    (which may have picked up one of those files) is running.
    """
    return _flock(ws, exclusive=True)


def prune_cache(ws: Workspace) -> int:
    """Delete cached blobs that no model folder links to any more.

    Skipped (returns 0) while an import is running in any process (:func:`cache_in_use`);
    the next delete or import prunes what is still unused then.

    A blob whose link count is 1 is held only by the cache. Snapshot symlinks left dangling
    are removed too, so huggingface_hub downloads such a file again when it is needed.

    Returns:
        The bytes freed.
    """
    with _flock(ws, exclusive=True) as held:
        return _prune(ws) if held else 0


def _prune(ws: Workspace) -> int:
    freed = 0
    candidates = list(blob_dir(ws).glob("*")) + list(hub_cache_dir(ws).glob("*/blobs/*"))
    for blob in candidates:
        with contextlib.suppress(FileNotFoundError):
            st = blob.lstat()
            if blob.name.endswith(".incomplete"):
                freed += _drop_abandoned_download(ws, blob, st.st_size)
            elif blob.is_file() and not blob.is_symlink() and st.st_nlink <= 1:
                blob.unlink()
                freed += st.st_size
    for link in hub_cache_dir(ws).glob("*/snapshots/**/*"):
        if link.is_symlink() and not link.exists():
            link.unlink()
    return freed


def _drop_abandoned_download(ws: Workspace, partial: Path, size: int) -> int:
    """Delete a partial download ``ETAG.UUID.incomplete`` unless a download of it is running.

    huggingface_hub (2.x) downloads into a file unique to its process and never resumes
    another process's file, so a partial file left by a killed import is dead weight. A live
    download holds huggingface_hub's per-file lock (``.locks/<repo>/<etag>.lock``); if that
    lock can be taken at once, nobody is writing the file.

    Returns:
        The bytes freed (0 when the file is in use).
    """
    from filelock import FileLock, Timeout

    etag = partial.name.split(".")[0]
    lock = hub_cache_dir(ws) / ".locks" / partial.parent.parent.name / f"{etag}.lock"
    if not lock.exists():
        partial.unlink(missing_ok=True)
        return size
    try:
        with FileLock(str(lock), timeout=0):
            partial.unlink(missing_ok=True)
            return size
    except Timeout:
        return 0


@contextlib.contextmanager
def tidy_on_failure(ws: Workspace) -> Iterator[None]:
    """Undo the bookkeeping folders a failed import created, so bad input changes nothing.

    On an exception, hub-cache repository folders that did not exist before and hold no
    downloaded file (only the ``refs`` huggingface_hub writes while resolving) are removed,
    then any of ``models/.staging``, ``models/.cache/hub`` and ``models/.cache`` that did not
    exist before and are now empty. Downloaded blobs are kept: a re-run reuses them.
    """
    hub_dir = hub_cache_dir(ws)
    watched = [ws.models_dir / STAGING, hub_dir, hub_dir.parent, ws.models_dir]
    existed = {p for p in watched if p.exists()}
    repos_before = set(hub_dir.iterdir()) if hub_dir.is_dir() else set()
    try:
        yield
    except BaseException:
        if hub_dir.is_dir():
            for repo in set(hub_dir.iterdir()) - repos_before:
                blobs = repo / "blobs"
                if not (blobs.is_dir() and any(blobs.iterdir())):
                    shutil.rmtree(repo, ignore_errors=True)
            locks = hub_dir / ".locks"
            if locks not in repos_before and locks.is_dir() and not any(locks.rglob("*.lock")):
                shutil.rmtree(locks, ignore_errors=True)
        if hub_dir.parent not in existed:
            (hub_dir.parent / USE_LOCK).unlink(missing_ok=True)
        for d in watched:
            if d not in existed:
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty
        raise


def discard(path: Path) -> None:
    """Remove a staging folder (or file) and ignore what is already gone."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
