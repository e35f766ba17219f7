"""The data path of a hub dataset: ``hf://datasets/ORG/NAME[@REVISION][/PATH-IN-REPO]``.

Parsed strictly, before any request: the repository id and the revision name files under the
hub cache, and PATH-IN-REPO is handed to ``datasets``, so each is refused unless it is a plain
name (no ``..``, no control characters, no query).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmforge.errors import InvalidSourceError
from llmforge.importing.source import check_revision
from llmforge.untrusted import brief

HF_PREFIX = "hf://datasets/"
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_SPECIAL_REFS = re.compile(r"refs/(?:pr/[0-9]+|convert/[A-Za-z0-9_-]+)(?=/|$)")
_PATH_PART = re.compile(r"[^\x00-\x1f\x7f\\:@]+")
_URI_HINT = (
    "Write hf://datasets/ORG/NAME, optionally followed by @REVISION (a branch, tag or 40-hex "
    "commit; refs/pr/N too) and /PATH-IN-REPO (a data file, a glob such as data/*.parquet, or a "
    "folder), e.g. hf://datasets/tatsu-lab/alpaca@main/data/train-*.parquet."
)


@dataclass(frozen=True)
class HubDatasetRef:
    """A dataset named by a data path.

    Attributes:
        repo_id: ``ORG/NAME``.
        revision: The branch, tag or commit asked for, or None for the default branch.
        path: A file, glob or folder inside the repository, or None for the whole dataset.
    """

    repo_id: str
    revision: str | None = None
    path: str | None = None

    def uri(self, sha: str | None = None) -> str:
        """The ``hf://`` form, pinned to ``sha`` when given."""
        rev, path = sha or self.revision, self.path
        return f"{HF_PREFIX}{self.repo_id}{f'@{rev}' if rev else ''}{f'/{path}' if path else ''}"

    @property
    def is_file_pattern(self) -> bool:
        """Whether ``path`` names files (a suffix or a glob) rather than a folder."""
        last = (self.path or "").rsplit("/", 1)[-1]
        return any(c in last for c in "*?[") or "." in last


def is_hub_uri(text: str | None) -> bool:
    """Whether a data path means the hub (``hf://...``) rather than a local file."""
    return isinstance(text, str) and text.strip().lower().startswith("hf://")


def _refuse(text: str, why: str) -> InvalidSourceError:
    return InvalidSourceError(f"The data path {brief(text, 120)} {why}.", _URI_HINT)


def parse_hub_uri(text: str) -> HubDatasetRef:
    """Parse ``hf://datasets/ORG/NAME[@REVISION][/PATH-IN-REPO]`` strictly, before any request.

    Raises:
        InvalidSourceError: For anything else: another scheme or repo type, a query, a repo id
            or revision of the wrong shape, or a path that could leave the repository.
    """
    if not text.startswith(HF_PREFIX):
        what = (
            "is not a hub dataset" if text.startswith("hf://") else "does not start hf://datasets/"
        )
        raise _refuse(text, what)
    rest = text[len(HF_PREFIX) :]
    if any(c in rest for c in "?#") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in rest):
        raise _refuse(text, "holds a query, a fragment or control characters")
    parts = rest.split("/", 2)
    if len(parts) < 2:
        raise _refuse(text, "names no ORG/NAME")
    org, name_rev = parts[0], parts[1]
    tail = parts[2] if len(parts) > 2 else ""
    name, at, revision = name_rev.partition("@")
    if at and revision == "refs" and (m := _SPECIAL_REFS.match(f"refs/{tail}")):
        revision, tail = m[0], f"refs/{tail}"[len(m[0]) :].lstrip("/")  # @refs/pr/3/PATH
    revision = re.sub("%2[Ff]", "/", revision)  # @refs%2Fpr%2F3, as HfFileSystem writes it
    for part in (org, name):
        if not _NAME.fullmatch(part) or ".." in part or "--" in part:
            raise _refuse(text, f"has {brief(part, 40)} where a hub name goes (ORG/NAME)")
    if at:
        try:
            check_revision(revision, "the data path")
        except InvalidSourceError:
            raise _refuse(text, "has a revision that is not a branch, tag or commit") from None
    return HubDatasetRef(f"{org}/{name}", revision or None, _check_path(text, tail))


def _check_path(text: str, tail: str) -> str | None:
    if not tail.strip("/"):
        return None  # the whole dataset
    parts = tail.rstrip("/").split("/")
    if any(p in ("", ".", "..") or not _PATH_PART.fullmatch(p) for p in parts):
        raise _refuse(text, "has a PATH-IN-REPO that is not a plain relative path")
    return "/".join(parts)
