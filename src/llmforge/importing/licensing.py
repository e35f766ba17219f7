"""A model's license: read from its model card metadata and/or its LICENSE file.

The model card (``README.md``) starts with YAML metadata between ``---`` lines; the hub's
convention is ``license`` (an SPDX-like id such as ``apache-2.0``, or ``other``) plus, for
``other``, ``license_name`` and ``license_link``. A ``LICENSE`` file, when present, is shown too.

Both come from the repository, so both are untrusted: only the first :data:`MAX_READ_BYTES` of
each file are read (a card or license can be hundreds of megabytes), the YAML goes through the
bounded loader, every value is cut to a short length and stripped of control characters, and
the excerpt is a few short lines. Printing still goes through ``untrusted.terminal_text``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmforge.untrusted import UntrustedYAMLError, load_yaml, terminal_text

_FRONT_MATTER = re.compile(r"\A\ufeff?---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
_EXCERPT_LINES = 12
_EXCERPT_LINE_CHARS = 200
_VALUE_CHARS = 200
MAX_READ_BYTES = 64 * 1024  # of a model card or a license file: what consent needs, no more


@dataclass(frozen=True)
class LicenseInfo:
    """What is known about a model's license.

    Attributes:
        license: The card's ``license`` value (``apache-2.0``, ``other``, ...), or None.
        name: The card's ``license_name`` (for ``other`` licenses), or None.
        link: The card's ``license_link``, or None.
        file: The name of the license file in the repository, or None.
        excerpt: The first lines of that file, or None.
        card_problem: Why the card's metadata was not read (a YAML bomb, bad YAML), or None.
    """

    license: str | None = None
    name: str | None = None
    link: str | None = None
    file: str | None = None
    excerpt: str | None = None
    card_problem: str | None = None

    @property
    def known(self) -> bool:
        """Whether any license information was found."""
        return bool(self.license or self.name or self.file)

    @property
    def label(self) -> str:
        """A short label to record in the registry: ``apache-2.0``, ``other:qwen-research``, ..."""
        if self.license and self.license != "other":
            return self.license
        if self.name:
            return f"other:{self.name}"
        if self.license:
            return self.license
        return f"see {self.file}" if self.file else "unknown"

    def describe(self) -> str:
        """One or two sentences for people: the license, its link and the license file."""
        parts = [f"License: {self.label}."]
        if self.link:
            parts.append(f"Terms: {self.link}.")
        if self.file:
            parts.append(f"The repository ships a {self.file} file.")
        if not self.known:
            parts = ["The model declares no license; check the terms of use before using it."]
        if self.card_problem:
            parts.insert(0, f"The model card's metadata was not read ({self.card_problem}).")
        return " ".join(parts)


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block at the top of a model card, or ``{}`` if absent or invalid."""
    return _front_matter(text)[0]


def _front_matter(text: str) -> tuple[dict[str, Any], str | None]:
    """The card's metadata and, when it could not be read, why (bounded, printable)."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, None
    try:
        data = load_yaml(match.group(1))
    except UntrustedYAMLError as e:  # an alias bomb, or absurd size or depth
        return {}, str(e)
    except yaml.YAMLError:  # an unreadable card says nothing
        return {}, "it is not valid YAML"
    return (data, None) if isinstance(data, dict) else ({}, None)


def read_start(path: Path, limit: int = MAX_READ_BYTES) -> str:
    """The first ``limit`` bytes of a file as text (invalid UTF-8 replaced)."""
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _short(value: Any) -> str | None:
    """A card value as one short, printable line; None for anything but text or numbers."""
    if isinstance(value, list):  # the card format allows a list of licenses
        value = ", ".join(str(x) for x in value[:8] if isinstance(x, str | int | float))
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = terminal_text(str(value), keep_newlines=False).strip()
    if len(text) > _VALUE_CHARS:
        text = text[: _VALUE_CHARS - 1] + "…"
    return text or None


def _excerpt(text: str | None) -> str | None:
    if not text:
        return None
    lines = []
    for line in text.splitlines()[:_EXCERPT_LINES]:
        line = terminal_text(line, keep_newlines=False).rstrip()
        lines.append(line if len(line) <= _EXCERPT_LINE_CHARS else line[:_EXCERPT_LINE_CHARS] + "…")
    return "\n".join(lines).strip() or None


def license_info(
    card_text: str | None,
    license_name: str | None,
    license_text: str | None,
    card_data: dict[str, Any] | None = None,
) -> LicenseInfo:
    """Collect license information from the card's metadata and a license file's text.

    Args:
        card_text: The start of the model card (``README.md``), or None.
        license_name: The license file's name in the repository, or None.
        license_text: The start of that file, or None.
        card_data: Card metadata the hub already returned; the card's own metadata wins.

    Returns:
        The license information (possibly empty: see :attr:`LicenseInfo.known`).
    """
    meta: dict[str, Any] = dict(card_data or {})
    problem = None
    if card_text:
        front, problem = _front_matter(card_text)
        meta.update(front)
    return LicenseInfo(
        license=_short(meta.get("license")),
        name=_short(meta.get("license_name")),
        link=_short(meta.get("license_link")),
        file=_short(license_name) if license_name else None,
        excerpt=_excerpt(license_text),
        card_problem=problem,
    )


def read_license(
    readme: Path | None,
    license_file: Path | None,
    card_data: dict[str, Any] | None = None,
) -> LicenseInfo:
    """Collect license information from the card metadata, the README and a LICENSE file.

    Only the first :data:`MAX_READ_BYTES` of each file are read.

    Args:
        readme: The model card file, if the repository has one.
        license_file: The LICENSE (or similar) file, if any.
        card_data: Card metadata the hub already returned; the README's own metadata wins.

    Returns:
        The license information (possibly empty: see :attr:`LicenseInfo.known`).
    """
    card = read_start(readme) if readme is not None and readme.is_file() else None
    has_license = license_file is not None and license_file.is_file()
    return license_info(
        card,
        license_file.name if license_file is not None else None,
        read_start(license_file) if has_license and license_file is not None else None,
        card_data,
    )
