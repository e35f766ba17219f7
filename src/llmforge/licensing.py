"""A model's license: read from its model card metadata and/or its LICENSE file.

The model card (``README.md``) starts with YAML metadata between ``---`` lines; the hub's
convention is ``license`` (an SPDX-like id such as ``apache-2.0``, or ``other``) plus, for
``other``, ``license_name`` and ``license_link``. A ``LICENSE`` file, when present, is shown too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmforge.untrusted import UntrustedYAMLError, load_yaml

_FRONT_MATTER = re.compile(r"\A\ufeff?---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
_EXCERPT_LINES = 12


@dataclass(frozen=True)
class LicenseInfo:
    """What is known about a model's license.

    Attributes:
        license: The card's ``license`` value (``apache-2.0``, ``other``, ...), or None.
        name: The card's ``license_name`` (for ``other`` licenses), or None.
        link: The card's ``license_link``, or None.
        file: The name of the license file in the repository, or None.
        excerpt: The first lines of that file, or None.
    """

    license: str | None = None
    name: str | None = None
    link: str | None = None
    file: str | None = None
    excerpt: str | None = None

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
        return " ".join(parts)


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block at the top of a model card, or ``{}`` if absent or invalid."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}
    try:
        data = load_yaml(match.group(1))
    except (yaml.YAMLError, UntrustedYAMLError):  # an unreadable card says nothing
        return {}
    return data if isinstance(data, dict) else {}


def read_license(
    readme: Path | None,
    license_file: Path | None,
    card_data: dict[str, Any] | None = None,
) -> LicenseInfo:
    """Collect license information from the card metadata, the README and a LICENSE file.

    Args:
        readme: The model card file, if the repository has one.
        license_file: The LICENSE (or similar) file, if any.
        card_data: Card metadata the hub already returned; the README's own metadata wins.

    Returns:
        The license information (possibly empty: see :attr:`LicenseInfo.known`).
    """
    meta: dict[str, Any] = dict(card_data or {})
    if readme is not None and readme.is_file():
        meta.update(read_front_matter(readme.read_text(encoding="utf-8", errors="replace")))
    lic = meta.get("license")
    if isinstance(lic, list):  # the card format allows a list
        lic = ", ".join(str(x) for x in lic)
    excerpt = None
    if license_file is not None and license_file.is_file():
        with open(license_file, encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip() for _, line in zip(range(_EXCERPT_LINES), f, strict=False)]
        excerpt = "\n".join(lines).strip() or None
    return LicenseInfo(
        license=str(lic) if lic else None,
        name=str(meta["license_name"]) if meta.get("license_name") else None,
        link=str(meta["license_link"]) if meta.get("license_link") else None,
        file=license_file.name if license_file is not None else None,
        excerpt=excerpt,
    )
