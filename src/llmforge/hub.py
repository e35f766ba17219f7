"""Talking to the Hugging Face Hub, always through ``huggingface_hub``.

This module knows the hub: how a SOURCE names a repository, what a repository holds at a
revision (files, sizes, checksums), which files a model needs, its license, and how to
download one file into the workspace's hub cache while reporting bytes. Every
``huggingface_hub`` exception is translated into llmforge's typed errors here, so the rest of
the code never sees them. ``huggingface_hub`` is imported lazily (it is slow to import).

``HF_ENDPOINT`` is read when a call is made (``huggingface_hub`` itself reads it only once at
import), ``HF_TOKEN`` and a token saved by ``hf auth login`` are used when no token is given,
and ``HF_HUB_OFFLINE=1`` makes every call fail fast with :class:`HubUnreachableError`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from llmforge.errors import (
    GatedRepoError,
    HubError,
    HubUnreachableError,
    InvalidSourceError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from llmforge.fsutil import atomic_write_text
from llmforge.repofiles import RemoteFile

HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@dataclass(frozen=True)
class Source:
    """What the user asked to import.

    Attributes:
        kind: ``hub`` for a hub repository, ``local`` for a folder on disk.
        repo_id: The hub id (``Qwen/Qwen2-0.5B``) for ``hub``; None for ``local``.
        revision: The branch, tag or commit from a ``/tree/REV`` URL, else None.
        path: The folder for ``local``; None for ``hub``.
    """

    kind: Literal["hub", "local"]
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None


def parse_source(text: str) -> Source:
    """Understand a SOURCE: an existing folder, a hub URL or a hub id.

    Args:
        text: ``Qwen/Qwen2-0.5B``, ``https://huggingface.co/Qwen/Qwen2-0.5B[/tree/REV]`` or a path.

    Returns:
        The parsed source. An existing folder wins over a hub id of the same spelling.

    Raises:
        InvalidSourceError: If ``text`` is none of these.
    """
    text = text.strip()
    path = Path(text).expanduser()
    if text and path.is_dir():
        return Source(kind="local", path=path.resolve())
    if text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", ".."):
        raise InvalidSourceError(
            f"The folder {text!r} does not exist.",
            "Give an existing folder in Hugging Face format (config.json, *.safetensors, "
            "tokenizer files), or a hub id such as Qwen/Qwen2-0.5B.",
        )
    if "://" in text:
        return _parse_url(text)
    if _REPO_ID.fullmatch(text) and ".." not in text and "--" not in text:
        return Source(kind="hub", repo_id=text)
    raise InvalidSourceError(
        f"{text!r} is not a hub id, a hub URL or an existing folder.",
        "Use a hub id (Qwen/Qwen2-0.5B), a URL (https://huggingface.co/Qwen/Qwen2-0.5B, "
        "optionally ending in /tree/REVISION) or the path of a local model folder.",
    )


def _parse_url(text: str) -> Source:
    url = urlparse(text)
    endpoint = urlparse(hub_endpoint() or "https://huggingface.co")
    hosts = HUB_HOSTS | {endpoint.netloc}
    hint = "Use https://huggingface.co/ORG/NAME or https://huggingface.co/ORG/NAME/tree/REVISION."
    if url.scheme not in ("http", "https") or url.netloc not in hosts:
        raise InvalidSourceError(f"{text!r} is not a Hugging Face Hub URL.", hint)
    prefix = endpoint.path.rstrip("/") if url.netloc == endpoint.netloc else ""
    parts = [p for p in url.path[len(prefix) :].split("/") if p]
    if parts and parts[0] in ("datasets", "spaces", "buckets"):
        raise InvalidSourceError(f"{text!r} points at {parts[0]}, not a model.", hint)
    if parts and parts[0] == "models":
        parts = parts[1:]
    if len(parts) >= 2 and parts[1] in ("tree", "blob", "resolve"):  # NAME/tree/REV, no org
        repo_parts, rest = parts[:1], parts[1:]
    else:
        repo_parts, rest = parts[:2], parts[2:]
    repo_id = "/".join(repo_parts)
    if not repo_parts or not _REPO_ID.fullmatch(repo_id):
        raise InvalidSourceError(f"{text!r} does not name a model repository.", hint)
    revision = None
    if rest:
        if rest[0] != "tree" or len(rest) < 2:
            raise InvalidSourceError(f"{text!r} does not name a model repository.", hint)
        revision = unquote("/".join(rest[1:]))
    return Source(kind="hub", repo_id=repo_id, revision=revision)


def hub_endpoint() -> str | None:
    """The hub endpoint from ``HF_ENDPOINT`` (read now, not at import), or None for the default."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


@dataclass
class RepoSnapshot:
    """What a repository holds at one commit.

    Attributes:
        repo_id: The hub id.
        sha: The commit sha the requested revision resolved to.
        files: Every file of the repository at that commit.
        gated: Whether the hub says the repository is gated.
        card_data: The model card metadata the hub returned (may be empty).
    """

    repo_id: str
    sha: str
    files: list[RemoteFile]
    gated: bool = False
    card_data: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str) -> RemoteFile | None:
        """The file at ``path``, or None."""
        return next((f for f in self.files if f.path == path), None)


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None, token: str | None) -> Iterator[None]:
    """Translate ``huggingface_hub`` and network exceptions into llmforge's typed errors.

    Args:
        repo_id: The repository being accessed (for the messages).
        revision: The revision being accessed, or None.
        token: The token in use; only whether there is one is used, never its value.
    """
    import httpx2
    from huggingface_hub import errors as hf

    rev = f" at revision {revision!r}" if revision else ""
    try:
        yield
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
    except hf.RevisionNotFoundError as e:
        raise RevisionNotFoundError(
            f"The repository {repo_id!r} has no revision {revision!r}.",
            "Use a branch, tag or commit sha that exists (see the repository's Files tab), "
            "or leave out --revision for the default branch.",
        ) from _bare(e)
    except hf.RemoteEntryNotFoundError as e:
        raise HubError(
            f"A file of {repo_id!r}{rev} disappeared from the hub while importing.",
            "Retry; if it persists, pick an explicit --revision.",
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


def _bare(error: BaseException) -> BaseException:
    """Drop the request (and its Authorization header) from a chained error."""
    error.__traceback__ = None
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
    sha = rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None
    ref = folder / "refs" / rev
    if sha is None and ref.is_file():
        sha = ref.read_text().strip()
    snap_dir = folder / "snapshots" / (sha or "-")
    if sha is None or not snap_dir.is_dir():
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
        if not info.sha:
            raise HubError(f"The hub did not say which commit {repo_id!r} is at.", None)
        tree = api.list_repo_tree(repo_id, revision=info.sha, recursive=True)
        files = [
            RemoteFile(
                path=e.path,
                size=int(e.size),
                blob_id=e.blob_id,
                sha256=e.lfs.sha256 if e.lfs else None,
            )
            for e in tree
            if isinstance(e, RepoFile)
        ]
    card = info.card_data.to_dict() if info.card_data is not None else {}
    if cache_dir is not None:  # remember ref -> commit like huggingface_hub does, for offline use
        ref = cache_dir / ("models--" + repo_id.replace("/", "--")) / "refs" / (revision or "main")
        if ".." not in Path(revision or "main").parts:
            atomic_write_text(ref, info.sha)
    return RepoSnapshot(repo_id, info.sha, files, gated=bool(info.gated), card_data=card)


class _ByteHook:
    """Build a tqdm class that reports downloaded bytes to a callback and draws nothing."""

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

    tqdm_class = _ByteHook.make(on_bytes) if on_bytes else None
    with hub_errors(snapshot.repo_id, snapshot.sha, token):
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
    folder = "models--" + snapshot.repo_id.replace("/", "--")
    pointer = cache_dir / folder / "snapshots" / snapshot.sha / path
    return pointer if pointer.exists() else None
