"""What an import is asked (:class:`ImportRequest`), what it reports (:class:`ImportHooks`,
:class:`ImportPlan`, :class:`ImportResult`), and the checks both sources make before the
user consents: the architecture, the size against the free disk space, the license.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from llmforge.errors import (
    ChecksumMismatchError,
    InsufficientDiskError,
    InvalidSourceError,
    LicenseNotAcceptedError,
    UnsupportedArchitectureError,
)
from llmforge.fsutil import human_bytes
from llmforge.importing.architectures import is_supported, supported_architectures
from llmforge.importing.licensing import LicenseInfo
from llmforge.importing.model_check import MAX_CONFIG_BYTES, parse_config
from llmforge.store.registry import (
    ModelEntry,
    utc_now,
)
from llmforge.untrusted import brief

WARN_BYTES_ENV = "LLMFORGE_IMPORT_WARN_BYTES"
DEFAULT_WARN_BYTES = 10 * 1000**3


@dataclass
class ImportRequest:
    """What the user asked for.

    Attributes:
        source: A hub id, a hub URL or a local folder.
        name: The registry name; derived from the source when None.
        revision: Branch, tag or commit (hub only); None for the default branch.
        token: A hub token; None uses ``HF_TOKEN`` or the saved login. Never stored, never
            shown (not even in this object's ``repr``).
        accept_license: The license was accepted up front (no prompt).
        force: Replace an existing entry with the same name.
        token_from: Where ``token`` came from (``--token``, ``HF_TOKEN``), for messages.
    """

    source: str
    name: str | None = None
    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    accept_license: bool = False
    force: bool = False
    token_from: str | None = None


def _nothing(*_: Any) -> None:
    return None


@dataclass
class ImportHooks:
    """Callbacks through which the pipeline reports; all optional.

    Attributes:
        on_plan: Called once before downloading, with the plan (sizes, files, license).
        on_warning: Called with a sentence worth showing (e.g. a very large download).
        confirm_license: Asked whether the license is accepted (unless accepted up front);
            returning False stops the import. It may raise instead.
        on_file_start: ``(file name, size)`` when a file starts (download or copy).
        on_bytes: Called with each number of bytes received.
        on_file_done: ``(file name, downloaded)`` when a file is in place.
        on_step: A short sentence for slower steps (verifying, converting).
    """

    on_plan: Callable[[ImportPlan], None] = _nothing
    on_warning: Callable[[str], None] = _nothing
    confirm_license: Callable[[LicenseInfo], bool] = lambda _info: False
    on_file_start: Callable[[str, int], None] = _nothing
    on_bytes: Callable[[int], None] = _nothing
    on_file_done: Callable[[str, bool], None] = _nothing
    on_step: Callable[[str], None] = _nothing


@dataclass
class ImportPlan:
    """What an import is about to do.

    Attributes:
        name: The registry name.
        model_id: The hub id or the folder.
        revision: The commit sha (hub) or None.
        architecture: The config.json ``model_type``.
        files: ``(name, size)`` of every file taken.
        skipped: Files left out.
        total_bytes: The size of the files taken.
        download_bytes: The part not yet in the cache.
        license: The license information.
        unsafe: Files refused because their names are unsafe to write (never fetched).
        convert: Whether pickled weights will be converted to safetensors.
        progress_files: How many files the progress hooks will report (the small metadata
            files read before the plan are not among them).
        progress_bytes: How many bytes the progress hooks will report.
    """

    name: str
    model_id: str
    revision: str | None
    architecture: str
    files: list[tuple[str, int]]
    skipped: list[str]
    total_bytes: int
    download_bytes: int
    license: LicenseInfo
    unsafe: list[str] = field(default_factory=list)
    convert: bool = False
    progress_files: int = 0
    progress_bytes: int = 0


@dataclass
class ImportResult:
    """What an import did.

    Attributes:
        entry: The new registry entry.
        downloaded_files: Files fetched from the hub in this run.
        reused_files: Files already in the cache.
        replaced: An entry of the same name was replaced (``--force``).
    """

    entry: ModelEntry
    downloaded_files: list[str] = field(default_factory=list)
    reused_files: list[str] = field(default_factory=list)
    replaced: bool = False


def check_architecture(config: dict[str, Any], where: str) -> str:
    """Return the config's ``model_type`` if llmforge supports it.

    Raises:
        UnsupportedArchitectureError: Listing the supported architectures.
    """
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not is_supported(model_type):
        shown = brief(model_type, 60) if model_type else "no model_type"
        raise UnsupportedArchitectureError(
            f"{where} has architecture {shown}, which llmforge cannot import.",
            "Supported architectures (config.json model_type): "
            + ", ".join(supported_architectures())
            + " (qwen2 covers Qwen2 and Qwen2.5). Another architecture needs an adapter package "
            "(see docs/adapters.md); custom code is never run.",
        )
    return model_type


def read_config(path: Path, where: str) -> dict[str, Any]:
    """Read and parse a config.json of at most :data:`MAX_CONFIG_BYTES`.

    Raises:
        InvalidSourceError: If it is too large, unreadable, or not a JSON object.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise InvalidSourceError(
            f"The config.json of {where} is unreadable ({e.strerror}).", None
        ) from None
    return parse_config(data, where)


def check_size(
    total: int, needed: int, where: Path, hooks: ImportHooks, free: int | None = None
) -> None:
    """Warn about a large import and refuse one the disk cannot hold.

    Args:
        total: The model's size in bytes.
        needed: Bytes that will be newly written (not already cached).
        where: A path on the disk that receives the files.
        hooks: Receives the warning.
        free: The free bytes (measured with ``shutil.disk_usage`` when None).

    Raises:
        InsufficientDiskError: If ``needed`` exceeds the free space.
    """
    threshold = int(os.environ.get(WARN_BYTES_ENV) or DEFAULT_WARN_BYTES)
    if total > threshold:
        hooks.on_warning(
            f"This model is {human_bytes(total)} (above {human_bytes(threshold)}); the download "
            "and training will need matching disk space and memory."
        )
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free if free is None else free
    if needed > free:
        raise InsufficientDiskError(
            f"Importing needs {human_bytes(needed)} but only {human_bytes(free)} is free on "
            f"the disk holding {where}.",
            "Free some space (e.g. `llmforge models delete NAME`) or use a workspace on "
            "another disk (--home / LLMFORGE_HOME).",
        )


def accept_license(
    info: LicenseInfo, req: ImportRequest, hooks: ImportHooks, name: str
) -> datetime:
    """Require acknowledgement of the license; return when it was accepted.

    Raises:
        LicenseNotAcceptedError: If the license was declined.
    """
    if not req.accept_license and not hooks.confirm_license(info):
        raise LicenseNotAcceptedError(
            f"The license of {name!r} ({info.label}) was not accepted; nothing was imported.",
            "Read the license, then pass --accept-license to import the model.",
        )
    return utc_now()


def checksum_error(file: str, expected: str, actual: str, kind: str) -> ChecksumMismatchError:
    """Build the error for a file that does not match the hub's checksum."""
    return ChecksumMismatchError(
        f"{file} does not match the hub's {kind}: expected {expected[:16]}…, got {actual[:16]}…. "
        "The corrupt download was discarded and nothing was imported.",
        "Retry the import; if it fails again, the repository or a proxy is serving bad data.",
    )
