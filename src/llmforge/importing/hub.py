"""Talking to the Hugging Face Hub, always through ``huggingface_hub``.

This module knows the hub: what a repository holds at a revision (files, sizes, checksums),
how to read the start of a file without keeping it, and how to download one file into the
workspace's hub cache while reporting bytes (how a SOURCE names a repository is
:mod:`llmforge.importing.source`). Every
``huggingface_hub`` exception is translated into llmforge's typed errors here, so the rest of
the code never sees them. ``huggingface_hub`` is imported lazily (it is slow to import).

``HF_ENDPOINT`` is read when a call is made (``huggingface_hub`` itself reads it only once at
import), ``HF_TOKEN`` and a token saved by ``hf auth login`` are used when no token is given,
and ``HF_HUB_OFFLINE=1`` makes every call fail fast with :class:`HubUnreachableError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import (
    GatedRepoError,
    HubError,
    HubUnreachableError,
    RepoChangedError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnsafePathError,
)
from llmforge.fsutil import atomic_write_text
from llmforge.importing.file_selection import RemoteFile, path_problem
from llmforge.importing.source import COMMIT, hub_endpoint
from llmforge.untrusted import brief
from llmforge.workspace import resolve_inside


@dataclass
class RepoSnapshot:
    """What a repository holds at one commit.

    Attributes:
        repo_id: The hub id.
        sha: The commit sha the requested revision resolved to.
        files: Every file of the repository at that commit.
        card_data: The model card metadata the hub returned (may be empty).
    """

    repo_id: str
    sha: str
    files: list[RemoteFile]
    card_data: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def hub_errors(
    repo_id: str, revision: str | None, token: str | None, *, pinned: bool = False
) -> Iterator[None]:
    """Translate ``huggingface_hub`` and network exceptions into llmforge's typed errors.

    Args:
        repo_id: The repository being accessed (for the messages).
        revision: The revision being accessed, or None.
        token: The token in use; only whether there is one is used, never its value.
        pinned: ``revision`` is the commit this import resolved (not the user's): if it or a
            file of it is gone, the repository changed during the import.
    """
    import httpx2
    from huggingface_hub import errors as hf

    rev = f" at revision {revision!r}" if revision else ""
    try:
        yield
    except (hf.RevisionNotFoundError, hf.RemoteEntryNotFoundError) as e:
        if not pinned:
            _raise_missing(e, repo_id, revision)
        raise RepoChangedError(
            f"The repository {repo_id!r} changed while it was being imported: its commit "
            f"{str(revision)[:12]} (or a file of it) is no longer on the hub. Nothing was "
            "imported.",
            "Retry the import to take the repository as it is now, or pass --revision with a "
            "commit sha that stays.",
        ) from _bare(e)
    except hf.GatedRepoError as e:
        hint = (
            "Your token has no access yet: accept the conditions on the repository page, "
            "then retry."
            if token
            else "Request access on the repository page, then pass a token with --token or "
            "HF_TOKEN."
        )
        raise GatedRepoError(f"The repository {repo_id!r} is gated.", hint) from _bare(e)
    except hf.RepositoryNotFoundError as e:
        raise RepoNotFoundError(
            f"The repository {repo_id!r} was not found on the hub.",
            "Check the spelling (ORG/NAME); a private repository also needs --token or HF_TOKEN.",
        ) from _bare(e)
    except (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError) as e:
        raise _unreachable(repo_id) from _bare(e)
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise HubError(
                f"The hub refused access to {repo_id!r} (HTTP {status}).",
                "Check that your token (--token or HF_TOKEN) is valid and may read this "
                "repository.",
            ) from _bare(e)
        raise HubError(
            f"The hub answered HTTP {status} for {repo_id!r}{rev}.",
            "Retry later; if it persists, check HF_ENDPOINT and the hub's status page.",
        ) from _bare(e)
    except (httpx2.TransportError, ConnectionError, TimeoutError) as e:
        raise _unreachable(repo_id) from _bare(e)
    except (ValueError, TypeError, KeyError, RecursionError) as e:  # not the answer expected
        raise HubError(
            f"The hub's answer about {repo_id!r}{rev} could not be read ({type(e).__name__}).",
            "Check HF_ENDPOINT; if it points at the real hub, retry later.",
        ) from None


def _raise_missing(error: Exception, repo_id: str, revision: str | None) -> None:
    from huggingface_hub import errors as hf

    if isinstance(error, hf.RevisionNotFoundError) and revision is None:
        raise RevisionNotFoundError(
            f"The repository {repo_id!r} has no default branch the hub can show (it may be empty).",
            "Check the repository page; pass --revision for a branch, tag or commit it has.",
        ) from _bare(error)
    if isinstance(error, hf.RevisionNotFoundError):
        raise RevisionNotFoundError(
            f"The repository {repo_id!r} has no revision {brief(revision, 80)}.",
            "Use a branch, tag or commit sha that exists (see the repository's Files tab), "
            "or leave out the revision for the default branch.",
        ) from _bare(error)
    raise HubError(
        f"A file of {repo_id!r} disappeared from the hub while importing.",
        "Retry; if it persists, pick an explicit --revision.",
    ) from _bare(error)


def _bare(error: BaseException) -> BaseException:
    """Drop the traceback, and with it the request (and its Authorization header)."""
    error.__traceback__ = None
    error.__context__ = None
    return error


def _unreachable(repo_id: str) -> HubUnreachableError:
    where = hub_endpoint() or "https://huggingface.co"
    return HubUnreachableError(
        f"Cannot reach the hub at {where} to fetch {repo_id!r}.",
        "Check your network connection and HF_ENDPOINT; unset HF_HUB_OFFLINE to allow "
        "downloads. A model already imported stays usable offline.",
    )


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read now as well as at huggingface_hub's import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in ("1", "ON", "YES", "TRUE") or constants.is_offline_mode()


def cached_snapshot(cache_dir: Path, repo_id: str, revision: str | None) -> RepoSnapshot | None:
    """The repository as an earlier import left it in the hub cache, or None.

    Checksums come from the cached blob names (sha256 for LFS files, git sha1 otherwise), so
    files are still verified offline. A snapshot without config.json or weights is ignored.
    """
    folder = cache_dir / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    sha = rev if COMMIT.fullmatch(rev) else None
    try:
        ref = resolve_inside(folder, f"refs/{rev}")
    except UnsafePathError:
        return None
    if sha is None and ref.is_file():
        sha = ref.read_text(errors="replace").strip()
    if sha is None or not COMMIT.fullmatch(sha):
        return None
    snap_dir = folder / "snapshots" / sha
    if not snap_dir.is_dir():
        return None
    files = []
    for p in sorted(snap_dir.rglob("*")):
        if p.is_file():
            etag = p.resolve().name
            files.append(
                RemoteFile(
                    path=p.relative_to(snap_dir).as_posix(),
                    size=p.stat().st_size,
                    blob_id=etag if len(etag) == 40 else None,
                    sha256=etag if len(etag) == 64 else None,
                )
            )
    names = {f.path for f in files}
    if "config.json" not in names or not any(n.endswith((".safetensors", ".bin")) for n in names):
        return None
    return RepoSnapshot(repo_id, sha, files)


def fetch_snapshot(
    repo_id: str, revision: str | None, token: str | None, cache_dir: Path | None = None
) -> RepoSnapshot:
    """Resolve ``revision`` to a commit and list the repository's files with sizes and checksums.

    With ``HF_HUB_OFFLINE`` set, the snapshot an earlier import left in ``cache_dir`` is used.

    Args:
        repo_id: The hub id.
        revision: Branch, tag or commit; None for the default branch.
        token: A hub token, or None to use ``HF_TOKEN`` / the saved login.
        cache_dir: The hub cache, for offline use.

    Raises:
        HubError: Or one of its subclasses, for every hub failure.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    if offline_mode():
        cached = cached_snapshot(cache_dir, repo_id, revision) if cache_dir else None
        if cached is None:
            raise HubUnreachableError(
                f"HF_HUB_OFFLINE is set and {repo_id!r}"
                + (f" at {revision!r}" if revision else "")
                + " is not in the local cache.",
                "Unset HF_HUB_OFFLINE to download it, or import it once while online.",
            )
        return cached
    api = HfApi(endpoint=hub_endpoint(), token=token)
    with hub_errors(repo_id, revision, token):
        info = api.model_info(repo_id, revision=revision)
    card = _card_dict(info.card_data)
    sha = info.sha
    if not isinstance(sha, str) or not COMMIT.fullmatch(sha):
        raise HubError(
            f"The hub did not say which commit {repo_id!r} is at (it answered "
            f"{brief(sha, 60)}, not a 40-character sha).",
            "Check HF_ENDPOINT; if it points at the real hub, retry later.",
        )
    with hub_errors(repo_id, sha, token, pinned=True):
        tree = api.list_repo_tree(repo_id, revision=sha, recursive=True)
        files = [
            RemoteFile(
                path=str(e.path),
                size=int(e.size),
                blob_id=e.blob_id,
                sha256=e.lfs.sha256 if e.lfs else None,
            )
            for e in tree
            if isinstance(e, RepoFile)
        ]
    return RepoSnapshot(repo_id, sha, files, card_data=card)


def _card_dict(card_data: Any) -> dict[str, Any]:
    """The hub's card metadata as a dict; anything unusable counts as none (it is optional)."""
    try:
        data = card_data.to_dict() if card_data is not None else {}
    except Exception:  # whatever a repository put there, the card's own README still counts
        return {}
    return data if isinstance(data, dict) else {}


def remember_ref(cache_dir: Path, repo_id: str, revision: str | None, sha: str) -> None:
    """Record ``revision -> sha`` in the cache as huggingface_hub does, for offline imports.

    Written only once an import has its files, so a refused import leaves the cache as it was.
    The revision was checked by :func:`check_revision`; the path is checked again here.
    """
    if revision is not None and COMMIT.fullmatch(revision):
        return  # a commit needs no ref
    folder = cache_dir / ("models--" + repo_id.replace("/", "--"))
    atomic_write_text(resolve_inside(folder, f"refs/{revision or 'main'}"), sha)


class _ByteHook:
    """Build a tqdm class that reports downloaded bytes to a callback and draws nothing.

    Every download passes one, so huggingface_hub never draws its own bars (named after
    cache files) before llmforge's progress.
    """

    @staticmethod
    def make(on_bytes: Callable[[int], None]) -> type:
        from tqdm import tqdm

        class _Hook(tqdm):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.pop("name", None)
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                on_bytes(int(n or 0))
                return super().update(n)

        return _Hook


def download_file(
    snapshot: RepoSnapshot,
    path: str,
    cache_dir: Path,
    token: str | None,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Download one file of ``snapshot`` into the hub cache (no request if already cached).

    Args:
        snapshot: The resolved repository.
        path: The file's path in the repository.
        cache_dir: The ``huggingface_hub`` cache folder (``models/.cache/hub``).
        token: A hub token, or None.
        on_bytes: Called with each number of bytes received.

    Returns:
        The cached file (a symlink into the cache's blobs on systems that support them).
    """
    from huggingface_hub import hf_hub_download

    tqdm_class = _ByteHook.make(on_bytes or (lambda _n: None))
    with hub_errors(snapshot.repo_id, snapshot.sha, token, pinned=True):
        local = hf_hub_download(
            snapshot.repo_id,
            path,
            revision=snapshot.sha,
            cache_dir=cache_dir,
            token=token,
            endpoint=hub_endpoint(),
            tqdm_class=tqdm_class,
        )
    return Path(str(local))


def cached_path(cache_dir: Path, snapshot: RepoSnapshot, path: str) -> Path | None:
    """The file's place in the hub cache if it is already there, else None (no request made)."""
    if path_problem(path) is not None or not COMMIT.fullmatch(snapshot.sha):
        return None
    folder = "models--" + snapshot.repo_id.replace("/", "--")
    pointer = cache_dir / folder / "snapshots" / snapshot.sha / path
    return pointer if pointer.exists() else None


def read_remote_start(snapshot: RepoSnapshot, path: str, token: str | None, limit: int) -> bytes:
    """Read at most ``limit`` bytes from the start of a file of ``snapshot``, writing nothing.

    What an import shows before the user consents (the card's metadata, the start of a
    license) and config.json are read this way: a ranged request, streamed and cut at
    ``limit``, so a 141 MB LICENSE costs 64 KB and nothing lands in the cache before consent.

    Args:
        snapshot: The resolved repository.
        path: The file's path in the repository.
        token: A hub token, or None for ``HF_TOKEN`` / the saved login.
        limit: The most bytes read.

    Returns:
        The bytes read (the whole file when it is shorter than ``limit``).
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(snapshot.repo_id, path, revision=snapshot.sha, endpoint=hub_endpoint())
    headers = {**build_hf_headers(token=token), "Range": f"bytes=0-{limit - 1}"}
    data = bytearray()
    with hub_errors(snapshot.repo_id, snapshot.sha, token, pinned=True):
        session = get_session()
        with session.stream("GET", url, headers=headers, follow_redirects=True) as response:
            if response.status_code == 416:  # an empty file: nothing in range
                return b""
            hf_raise_for_status(response)
            for chunk in response.iter_bytes():
                data += chunk[: limit - len(data)]
                if len(data) >= limit:
                    break
    return bytes(data)
