"""What a failed import leaves behind: nothing (the one place that enforces it).

An import writes in three places: its own staging folder (``models/.staging/NAME.PID.*``),
the caches (``models/.cache/hub`` for downloads, ``models/.cache/blobs`` for local files and
converted weights) and, at the very end, ``models/NAME`` with its registry entry.
:func:`leave_no_trace` wraps the whole import:

- a refusal at any step (bad input, a declined license, no disk space, a checksum mismatch,
  weights that do not fit config.json, a full disk) leaves ``models/`` byte-identical: the
  staging folder is removed, every cache entry that is new since the import began is taken
  back (unless a model now links to it), and folders the import created are removed;
- an interruption (Ctrl-C), a hub that became unreachable, or a repository that changed during
  the import keep the whole, verified files already downloaded, so the retry does not fetch
  them again (the next prune removes them if no model uses them);
- a kill (SIGKILL, a closed terminal, power loss) cannot clean up. Before consent there is
  nothing to clean (nothing was written); after it, it leaves a staging folder, partial
  downloads and unlinked cache files, which the next import removes (their owner's PID is
  gone, or no download holds their lock).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from llmforge.errors import HubUnreachableError, InsufficientDiskError, RepoChangedError
from llmforge.fsutil import is_disk_full
from llmforge.store import blobs
from llmforge.workspace import Workspace


class ImportWork:
    """Where an import may write, opened only once the user has consented.

    Until :meth:`begin` nothing exists on disk for the import (config.json, the card and the
    license are read into memory), so a decline, a refusal, or a kill at the license prompt
    leaves nothing at all.
    """

    def __init__(self, ws: Workspace, name: str, stack: contextlib.ExitStack) -> None:
        self._ws, self._name, self._stack = ws, name, stack
        self.staging: Path | None = None

    def begin(self) -> Path:
        """Hold the cache shared and create the private staging folder; return the folder."""
        if self.staging is None:
            self._stack.enter_context(blobs.cache_in_use(self._ws))
            self.staging = blobs.new_staging_dir(self._ws, self._name)
            self._stack.callback(blobs.discard, self.staging)  # committed or not, it goes
        return self.staging


@contextlib.contextmanager
def leave_no_trace(ws: Workspace, name: str) -> Iterator[ImportWork]:
    """Run an import so that a refusal leaves ``models/`` exactly as it was.

    Yields the import's :class:`ImportWork`: its staging folder and its hold on the cache
    (:func:`llmforge.store.blobs.cache_in_use`) start when the import calls ``begin()``, after
    consent. A full disk becomes :class:`~llmforge.errors.InsufficientDiskError`.

    Args:
        ws: The workspace.
        name: The model being imported (for the disk-full message).
    """
    undo = _CacheUndo(ws)
    with blobs.tidy_on_failure(ws):
        try:
            with contextlib.ExitStack() as stack, _disk_full_is_clear(name):
                yield ImportWork(ws, name, stack)
        except BaseException as e:
            if not isinstance(e, _RETRYABLE):
                undo.undo(ws)
            raise


# Failures after which a retry is the next step: the whole, verified files already downloaded
# stay in the cache so the retry does not fetch them again (the next prune removes them if
# nothing uses them). Every other failure is a refusal and leaves models/ as it was.
_RETRYABLE = (KeyboardInterrupt, HubUnreachableError, RepoChangedError)


class _CacheUndo:
    """What ``models/.cache`` held before an import, to take back what a refused import added.

    Downloads go through huggingface_hub's cache (blobs, snapshot links, lock files, refs) and
    local files through the blob store; a refusal after some of them (a checksum mismatch,
    weights that do not fit config.json, a full disk) removes every entry that is new since
    the import started, except files a model now links to. Nothing is removed while another
    import holds the cache: it may be using a blob this one fetched.
    """

    def __init__(self, ws: Workspace) -> None:
        self.root = ws.models_dir / blobs.CACHE
        self.before = _entries(self.root)

    def undo(self, ws: Workspace) -> None:
        with blobs.cache_idle(ws) as idle:
            if not idle:
                return
            for rel in sorted(_entries(self.root) - self.before, key=len, reverse=True):
                path = self.root / rel
                with contextlib.suppress(OSError):
                    if rel == blobs.USE_LOCK:
                        continue  # the lock held right now; tidy_on_failure removes it
                    if path.is_symlink() or path.is_file():
                        target = path.resolve() if path.is_symlink() else path
                        if not (target.is_file() and target.stat().st_nlink > 1):
                            path.unlink()
                    elif path.is_dir():
                        path.rmdir()  # only if empty


def _entries(root: Path) -> set[str]:
    """Every file, link and folder under ``root``, relative (empty if it does not exist)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            found.add(n if rel == "." else os.path.join(rel, n))
    return found


@contextlib.contextmanager
def _disk_full_is_clear(name: str) -> Iterator[None]:
    """Turn a full disk (or a file-size limit) into one clear error."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise InsufficientDiskError(
            f"The disk ran out of space while importing {name!r} ({e.strerror}); nothing "
            "was imported and the partial files were removed.",
            "Free some space (e.g. `llmforge models delete NAME`) or use a workspace on "
            "another disk (--home / LLMFORGE_HOME), then retry.",
        ) from None
