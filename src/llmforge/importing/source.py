"""What the user asked to import, checked before any request: SOURCE, revision and token.

A SOURCE is a hub id (``Qwen/Qwen2-0.5B``), a hub URL (optionally ``.../tree/REV``) or a local
folder. A revision names a file in the hub cache (``refs/REV``), so it must be branch-, tag- or
commit-shaped; a token goes into an HTTP header, so it must be one word of printable ASCII
(the HTTP library's own error would quote it). Neither is ever echoed in full.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from llmforge.errors import InvalidSourceError, MalformedTokenError
from llmforge.untrusted import brief

HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
# The hub's own rule (huggingface_hub.utils.validate_repo_id): each part at most 96 characters,
# so a repository's cache folder name always fits the file system's 255-byte limit.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
# A branch or tag name as git allows it, narrowed to what can never be a path outside the
# cache: "/"-separated parts of letters, digits and ._+-, no part starting with "." or "-",
# no "..", nothing ending in ".lock". refs/pr/3 and v1.0 pass; /etc, ../x, a//b do not.
_REF_PART = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*")
COMMIT = re.compile(r"[0-9a-f]{40}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no whitespace: every hub token


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
    try:
        is_folder = bool(text) and path.is_dir()
    except OSError:  # a name over the file system's limits (ENAMETOOLONG) is no folder
        is_folder = False
    if is_folder:
        return Source(kind="local", path=path.resolve())
    if text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", ".."):
        raise InvalidSourceError(
            f"The folder {brief(text)} does not exist.",
            "Give an existing folder in Hugging Face format (config.json, *.safetensors, "
            "tokenizer files), or a hub id such as Qwen/Qwen2-0.5B.",
        )
    if "://" in text:
        return _parse_url(text)
    if _REPO_ID.fullmatch(text) and ".." not in text and "--" not in text:
        return Source(kind="hub", repo_id=text)
    raise InvalidSourceError(
        f"{brief(text)} is not a hub id, a hub URL or an existing folder.",
        "Use a hub id (Qwen/Qwen2-0.5B), a URL (https://huggingface.co/Qwen/Qwen2-0.5B, "
        "optionally ending in /tree/REVISION) or the path of a local model folder.",
    )


def _parse_url(text: str) -> Source:
    url = urlparse(text)
    endpoint = urlparse(hub_endpoint() or "https://huggingface.co")
    hosts = HUB_HOSTS | {endpoint.netloc}
    hint = "Use https://huggingface.co/ORG/NAME or https://huggingface.co/ORG/NAME/tree/REVISION."
    if url.scheme not in ("http", "https") or url.netloc not in hosts:
        raise InvalidSourceError(f"{brief(text)} is not a Hugging Face Hub URL.", hint)
    prefix = endpoint.path.rstrip("/") if url.netloc == endpoint.netloc else ""
    parts = [p for p in url.path[len(prefix) :].split("/") if p]
    if parts and parts[0] in ("datasets", "spaces", "buckets"):
        raise InvalidSourceError(f"{brief(text)} points at {parts[0]}, not a model.", hint)
    if parts and parts[0] == "models":
        parts = parts[1:]
    if len(parts) >= 2 and parts[1] in ("tree", "blob", "resolve"):  # NAME/tree/REV, no org
        repo_parts, rest = parts[:1], parts[1:]
    else:
        repo_parts, rest = parts[:2], parts[2:]
    repo_id = "/".join(repo_parts)
    if not repo_parts or not _REPO_ID.fullmatch(repo_id):
        raise InvalidSourceError(f"{brief(text)} does not name a model repository.", hint)
    revision = None
    if rest:
        if rest[0] != "tree" or len(rest) < 2:
            raise InvalidSourceError(f"{brief(text)} does not name a model repository.", hint)
        revision = check_revision(unquote("/".join(rest[1:])), "the URL")
    return Source(kind="hub", repo_id=repo_id, revision=revision)


def check_revision(revision: str, origin: str) -> str:
    """Refuse a revision that is not branch-, tag- or commit-shaped, before any request.

    The revision names a file under the hub cache (``refs/REVISION``), so anything that is
    not a plain ref name (``/some/path``, ``../x``, control characters) is refused.

    Args:
        revision: The revision as given.
        origin: Where it came from, for the message (``--revision``, ``the URL``).

    Returns:
        The revision, unchanged.

    Raises:
        InvalidSourceError: If it is not a branch, tag or commit sha.
    """
    parts = revision.split("/")
    ok = (
        0 < len(revision) <= 255
        and ".." not in revision
        and not revision.endswith(".lock")
        and all(_REF_PART.fullmatch(part) for part in parts)
    )
    if not ok:
        raise InvalidSourceError(
            f"The revision {brief(revision, 80)} from {origin} is not a branch, tag or commit "
            "sha; llmforge refuses it before contacting the hub.",
            "Give a branch (main), a tag (v1.0), a commit sha (40 hex characters) or a pull "
            "request ref (refs/pr/3), or leave the revision out for the default branch.",
        )
    return revision


def check_token(token: str | None, origin: str) -> None:
    """Refuse a token that holds characters no hub token has, never echoing its value.

    A token with a trailing newline (from ``echo`` or a file), a space or non-ASCII letters
    would otherwise fail inside the HTTP library, whose messages quote the header, token
    included.

    Args:
        token: The token, or None.
        origin: Where it came from (``--token``, ``HF_TOKEN``, the saved login).

    Raises:
        MalformedTokenError: If the token is not printable ASCII without spaces.
    """
    if token is None or _TOKEN.fullmatch(token):
        return
    kinds = []
    if any(c in "\r\n" for c in token):
        kinds.append("a line break")
    if any(c in " \t" for c in token):
        kinds.append("whitespace")
    if any(ord(c) > 0x7E for c in token):
        kinds.append("non-ASCII characters")
    if not kinds:
        kinds.append("control characters")
    raise MalformedTokenError(
        f"The hub token from {origin} is malformed: it holds {' and '.join(kinds)}, which no "
        "hub token has (its value is not shown).",
        "Copy the token again from https://huggingface.co/settings/tokens (a token is one "
        "word of printable ASCII, such as hf_...), without quotes or a trailing newline.",
    )


def token_origin(token: str | None, given: str | None) -> tuple[str | None, str]:
    """The token an import will send, and where it comes from (for messages only).

    Args:
        token: The token the caller passed (``--token`` or ``HF_TOKEN`` read by the CLI).
        given: Where the caller's token came from, or None to say ``the given token``.

    Returns:
        ``(token, origin)``; without a token of the caller's, the one ``huggingface_hub``
        would use (``HF_TOKEN``, else the saved login), or None.
    """
    if token is not None:
        return token, given or "the given token"
    from huggingface_hub import get_token

    found = get_token()
    if found is None:
        return None, "no token"
    env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return found, "HF_TOKEN" if env else "the saved login (`hf auth login`)"


def hub_endpoint() -> str | None:
    """The hub endpoint from ``HF_ENDPOINT`` (read now, not at import), or None for the default."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None
