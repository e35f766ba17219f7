"""Training data from the Hugging Face Hub: ``hf://datasets/ORG/NAME[@REVISION][/PATH-IN-REPO]``.

A data path of that shape is read with the ``datasets`` library through ``huggingface_hub``:

1. :func:`llmforge.data.hub_uri.parse_hub_uri` checks the text before any request;
2. :func:`resolve_commit` turns the revision into a commit sha (``HfApi.dataset_info``, or the
   ``refs/REVISION`` file of the hub cache when ``HF_HUB_OFFLINE`` is set), and remembers it there;
3. :func:`load_splits` prepares the splits at that commit into the datasets cache
   (``HF_DATASETS_CACHE``, by default ``HF_HOME/datasets``) and opens them memory-mapped.
   Offline, the prepared Arrow files of exactly that commit are opened (``datasets`` itself
   would take the most recently prepared commit of the dataset, whatever revision was asked);
4. :mod:`llmforge.data.hub_records` maps the columns onto llmforge's records and
   fingerprints the rows.

Every failure is one of llmforge's typed errors naming the dataset. Only the HF cache is
written: by ``huggingface_hub`` and ``datasets``, plus a ``refs/REVISION`` file and an index
(``<org>___<name>/.llmforge/<sha>/*.json``: which prepared folder holds a config and path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.data.hub_uri import HF_PREFIX, HubDatasetRef
from llmforge.errors import (
    DataError,
    GatedRepoError,
    HubError,
    HubUnreachableError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from llmforge.fsutil import atomic_write_json, atomic_write_text
from llmforge.importing.hub import offline_mode
from llmforge.importing.source import COMMIT, check_token, hub_endpoint, token_origin
from llmforge.untrusted import brief
from llmforge.workspace import resolve_inside

_HASHED_ID = re.compile(r".+-[0-9a-f]{16}")


# -- revision -> commit ----------------------------------------------------------------------
def offline() -> bool:
    """``HF_HUB_OFFLINE``, or ``HF_DATASETS_OFFLINE`` (which ``datasets`` obeys too), read now."""
    env = os.environ.get("HF_DATASETS_OFFLINE", "").strip().upper()
    return offline_mode() or env in ("1", "ON", "YES", "TRUE")


def hub_cache() -> Path:
    """The hub cache as ``huggingface_hub`` computes it, read now (not at import)."""
    if env := os.environ.get("HF_HUB_CACHE"):
        return Path(env).expanduser()
    return _hf_home() / "hub"


def datasets_cache() -> Path:
    """The datasets cache (``HF_DATASETS_CACHE``, else ``HF_HOME/datasets``), read now."""
    if env := os.environ.get("HF_DATASETS_CACHE"):
        return Path(env).expanduser()
    return _hf_home() / "datasets"


def _hf_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(os.environ.get("HF_HOME") or Path(xdg) / "huggingface").expanduser()


def _ref_file(repo_id: str, revision: str) -> Path:
    folder = hub_cache() / ("datasets--" + repo_id.replace("/", "--"))
    return resolve_inside(folder, f"refs/{revision}")


def resolve_commit(ref: HubDatasetRef, token: str | None) -> str:
    """The commit sha ``ref.revision`` names now (online) or last named (offline).

    Raises:
        RepoNotFoundError, RevisionNotFoundError, GatedRepoError, HubUnreachableError, HubError.
    """
    rev = ref.revision or "main"
    if offline():
        if COMMIT.fullmatch(rev):
            return rev
        ref_file = _ref_file(ref.repo_id, rev)
        sha = ref_file.read_text().strip() if ref_file.is_file() else ""
        if not COMMIT.fullmatch(sha):
            raise HubUnreachableError(
                f"Offline (HF_HUB_OFFLINE), and the dataset {ref.repo_id!r} at {rev!r} was never "
                "loaded on this machine, so its commit is unknown.",
                "Load it once online, or pin the commit: hf://datasets/ORG/NAME@<40-hex sha>.",
            )
        return sha
    from huggingface_hub import HfApi

    with dataset_errors(ref):
        info = HfApi(endpoint=hub_endpoint(), token=token).dataset_info(
            ref.repo_id, revision=ref.revision
        )
    sha = info.sha
    if not isinstance(sha, str) or not COMMIT.fullmatch(sha):
        raise HubError(
            f"The hub did not say which commit the dataset {ref.repo_id!r} is at.",
            "Check HF_ENDPOINT; if it points at the real hub, retry later.",
        )
    from huggingface_hub import get_token

    if info.gated and not (token or get_token()):
        raise GatedRepoError(
            f"The dataset {ref.repo_id!r} is gated: its files need a token of an account that "
            "was granted access. Nothing was downloaded.",
            "Request access on the dataset's page, then set HF_TOKEN (or run `hf auth login`).",
        )
    return sha


def remember_commit(ref: HubDatasetRef, sha: str) -> None:
    """Record ``revision -> sha`` as ``huggingface_hub`` does (``refs/REV``), for offline runs.

    Written once the splits are prepared, so a refused load leaves no ref behind.
    ``datasets`` writes none: it is always called with the commit sha.
    """
    rev = ref.revision or "main"
    if not COMMIT.fullmatch(rev):
        atomic_write_text(_ref_file(ref.repo_id, rev), sha)


@contextlib.contextmanager
def dataset_errors(ref: HubDatasetRef, config: str | None = None) -> Iterator[None]:
    """Translate ``huggingface_hub`` and ``datasets`` exceptions into llmforge's typed errors."""
    import httpx2
    from huggingface_hub import errors as hf

    name = repr(ref.repo_id)
    try:
        yield
    except Exception as e:
        chain = _causes(e)
        gated = next((c for c in chain if isinstance(c, hf.GatedRepoError)), None)
        if gated is not None:
            status = gated.response.status_code if gated.response is not None else None
            raise GatedRepoError(
                f"The dataset {name} is gated and the hub refused its files (HTTP {status}).",
                "Request access on the dataset's page (or accept its conditions), then set "
                "HF_TOKEN to a token of that account.",
            ) from None
        if any(isinstance(c, hf.RevisionNotFoundError) for c in chain):
            raise RevisionNotFoundError(
                f"The dataset {name} has no revision {brief(ref.revision, 80)}.",
                "Use a branch, tag or commit sha it has, or leave out @REVISION.",
            ) from None
        if any(isinstance(c, hf.RepositoryNotFoundError) for c in chain):
            raise RepoNotFoundError(
                f"The dataset {name} was not found on the hub (or it is private and the token "
                "in use cannot see it).",
                "Check the spelling of hf://datasets/ORG/NAME; a private dataset needs HF_TOKEN.",
            ) from None
        unreachable = (httpx2.TransportError, hf.OfflineModeIsEnabled, ConnectionError)
        if any(isinstance(c, unreachable) for c in chain):
            raise HubUnreachableError(
                f"Cannot reach the hub at {hub_endpoint() or 'https://huggingface.co'} to "
                f"read the dataset {name}.",
                "Check your network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache.",
            ) from None
        _raise_data_problem(e, ref, config)
        raise


def _causes(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and len(out) < 16:
        out.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return out


def _raise_data_problem(e: Exception, ref: HubDatasetRef, config: str | None) -> None:
    from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

    name, why = repr(ref.repo_id), brief(str(e), 200)
    if isinstance(e, DatasetNotFoundError) and "gated" in str(e):  # its cause is dropped
        raise GatedRepoError(
            f"The dataset {name} is gated and the hub refused its files to this token.",
            "Request access on the dataset's page (or accept its conditions), then retry.",
        ) from None
    if isinstance(e, ValueError) and str(e).startswith("BuilderConfig"):
        raise DataError(
            f"The dataset {name} has no config {config!r} ({why}).",
            "Set data_config to one of its configs, or remove it for the default.",
        ) from None
    if isinstance(e, FileNotFoundError):  # DataFilesNotFoundError, EmptyDatasetError too
        what = f"no file or folder matching {ref.path!r}" if ref.path else "no data files"
        raise DataError(
            f"The dataset {name} has {what} that llmforge can read (parquet, jsonl, json, "
            "csv, txt).",
            "Check PATH-IN-REPO against the dataset's Files tab."
            if ref.path
            else "Check the dataset's Files tab; give PATH-IN-REPO to pick its data files.",
        ) from None
    if isinstance(e, DatasetGenerationError):
        cause = e.__cause__ or e
        raise DataError(
            f"The data files of the dataset {name} could not be read: "
            f"{type(cause).__name__}: {brief(str(cause), 200)}.",
            "Check the files on the dataset's page; an empty parquet file cannot be read.",
        ) from None


# -- loading splits --------------------------------------------------------------------------
@dataclass
class LoadedSplits:
    """Splits of one dataset at commit ``sha`` (config ``config``, ``default`` when it has no
    configs), as memory-mapped ``datasets.Dataset`` objects by split name."""

    ref: HubDatasetRef
    sha: str
    config: str
    splits: dict[str, Any]


def _index_file(ref: HubDatasetRef, sha: str, config: str | None) -> Path:
    from datasets.naming import camelcase_to_snakecase

    org, name = ref.repo_id.split("/")
    key = hashlib.sha256(json.dumps([config, ref.path]).encode()).hexdigest()[:20]
    folder = datasets_cache() / f"{org}___{camelcase_to_snakecase(name)}"
    return resolve_inside(folder, f".llmforge/{sha}/{key}.json")


def load_splits(
    ref: HubDatasetRef, sha: str, config: str | None, splits: Sequence[str], token: str | None
) -> LoadedSplits:
    """Open ``splits`` of the dataset at ``sha``, preparing them first unless done before
    (by llmforge or ``datasets``): prepared ones open with no request, as a commit never changes.

    Raises:
        DataError: For a missing config or split, or no readable data files.
        HubError: Or a subclass, for hub failures (HubUnreachableError offline, if the
            splits were never prepared).
    """
    config_id = prepared_config_id(ref, sha, config)
    if config_id is not None:
        return _open_prepared(ref, sha, config_id, splits)
    if offline():
        raise HubUnreachableError(
            f"Offline (HF_HUB_OFFLINE), and the dataset {ref.repo_id!r} at commit {sha[:12]}"
            + (f" (config {config!r})" if config else "")
            + (f" ({ref.path})" if ref.path else "")
            + " was never prepared on this machine.",
            "Load it once online with the same data_path and data_config.",
        )
    import datasets

    kwargs: dict[str, Any] = {}
    if ref.path:
        kwargs["data_files" if ref.is_file_pattern else "data_dir"] = ref.path
    with dataset_errors(ref, config), _settings_now():
        builder = datasets.load_dataset_builder(
            HF_PREFIX + ref.repo_id,  # remote only: a local folder ORG/NAME is never taken
            name=config,
            revision=sha,
            cache_dir=str(datasets_cache()),
            token=token,
            **kwargs,
        )
        known = builder.info.splits or getattr(builder.config, "data_files", None)  # unprepared
        _check_splits(ref, builder.config.name, splits, list(known) if known else None)
        builder.download_and_prepare()
        opened = _open(ref, builder, builder.config.name, splits)
    config_id = Path(builder.cache_dir).parts[-3]
    atomic_write_json(_index_file(ref, sha, config), {"config_id": config_id})
    return LoadedSplits(ref, sha, builder.config.name, opened)


def _check_splits(
    ref: HubDatasetRef, config: str, wanted: Sequence[str], known: list[str] | None
) -> None:
    missing = [s for s in wanted if known is not None and s not in known]
    if missing:
        raise DataError(
            f"The dataset {ref.repo_id!r} (config {config!r}) has no split "
            f"{missing[0]!r}; it has {', '.join(map(repr, known or []))}. Nothing was downloaded.",
            "Set data_split / val_split to one of those splits"
            + (" (the files a PATH-IN-REPO names make one split, train)." if ref.path else "."),
        )


@contextlib.contextmanager
def _settings_now() -> Iterator[None]:
    """Give ``datasets`` the settings of now, for the duration of one load.

    ``datasets`` reads ``HF_ENDPOINT`` once, at import, and takes no argument for it; some
    of its URLs come from ``huggingface_hub``'s ``ENDPOINT`` and its raw downloads go to
    ``huggingface_hub``'s hub cache, both also read at import. llmforge reads
    both at each call, as for models. Download counting is turned off unless the user set
    ``HF_UPDATE_DOWNLOAD_COUNTS`` to a true value: it sends a request to
    ``s3.amazonaws.com`` (a host ``HF_ENDPOINT`` does not redirect, with a 3 s timeout on a
    machine that cannot reach it) on every online load, a mirror's included.
    """
    import datasets.config as cfg
    from huggingface_hub import constants

    names = ("HF_ENDPOINT", "HUB_DATASETS_URL", "HF_UPDATE_DOWNLOAD_COUNTS")
    hub_names = ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_CACHE")
    saved = [getattr(cfg, n) for n in names], [getattr(constants, n) for n in hub_names]
    endpoint = hub_endpoint() or "https://huggingface.co"
    counts = os.environ.get("HF_UPDATE_DOWNLOAD_COUNTS", "").strip().upper()
    now = (
        endpoint,
        endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        counts in ("1", "ON", "YES", "TRUE"),
    )
    hub_now = (endpoint, endpoint + "/{repo_id}/resolve/{revision}/{filename}", str(hub_cache()))
    for module, keys, values in ((cfg, names, now), (constants, hub_names, hub_now)):
        for key, value in zip(keys, values, strict=True):
            setattr(module, key, value)
    try:
        yield
    finally:
        for module, keys, values in ((cfg, names, saved[0]), (constants, hub_names, saved[1])):
            for key, value in zip(keys, values, strict=True):
                setattr(module, key, value)


def hub_token() -> str | None:
    """The token a load sends (``HF_TOKEN``, else the saved login), checked, never shown.

    Raises:
        MalformedTokenError: For a token no hub token looks like (a trailing newline...).
    """
    token, origin = token_origin(None, None)
    check_token(token, origin)
    return token


def prepared_config_id(ref: HubDatasetRef, sha: str, config: str | None) -> str | None:
    """The folder name (config id) under which ``(ref, sha, config)`` was prepared, or None.

    llmforge's index says it exactly. Without one (prepared by ``datasets`` itself), a whole
    dataset is found by its config name; a PATH-IN-REPO is not: its folder name hashes the
    resolved file list, which only a listing of the repository can give.
    """
    index = _index_file(ref, sha, config)
    if index.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            config_id = str(json.loads(index.read_text())["config_id"])
            if (index.parents[2] / config_id / "0.0.0" / sha / "dataset_info.json").is_file():
                return config_id
    if ref.path:
        return None
    root = index.parents[2]
    names = [p.parts[-3] for p in root.glob(f"*/*/{sha}") if (p / "dataset_info.json").is_file()]
    plain = [n for n in names if not _HASHED_ID.fullmatch(n)]  # not "<config>-<data_files hash>"
    if config is not None:
        return config if config in plain else None
    return plain[0] if len(plain) == 1 else None


def _open_prepared(
    ref: HubDatasetRef, sha: str, config_id: str, splits: Sequence[str]
) -> LoadedSplits:
    """Open splits prepared before, by commit (``datasets`` offline would take the newest)."""
    from datasets.packaged_modules.cache.cache import Cache

    builder = Cache(
        cache_dir=str(datasets_cache()),
        dataset_name=ref.repo_id.split("/")[1],
        repo_id=ref.repo_id,
        config_name=config_id,
        version="0.0.0",
        hash=sha,
    )
    config = builder.info.config_name or config_id
    _check_splits(ref, config, splits, list(builder.info.splits or []))
    return LoadedSplits(ref, sha, config, _open(ref, builder, config, splits))


def _open(ref: HubDatasetRef, builder: Any, config: str, splits: Sequence[str]) -> dict[str, Any]:
    """The prepared splits, memory-mapped; an empty one is refused (``datasets`` cannot open it)."""
    for s in splits:
        if (info := (builder.info.splits or {}).get(s)) is not None and not info.num_examples:
            raise DataError(
                f"The split {s!r} of the dataset {ref.repo_id!r} (config {config!r}) is empty: "
                "it has no rows.",
                "Pick another split (data_split / val_split) or config (data_config).",
            )
    return {s: builder.as_dataset(split=s) for s in splits}
