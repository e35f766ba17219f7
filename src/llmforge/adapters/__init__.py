"""Adapter lookup by architecture.

Adapters are found through the ``llmforge.adapters`` entry-point group (a third-party
package adds an architecture by declaring one), with the built-in ones as a fallback when
llmforge runs from a source tree without installed metadata.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from llmforge.adapters.base import ModelAdapter
from llmforge.errors import AdapterNotFoundError
from llmforge.untrusted import brief

ENTRY_POINT_GROUP = "llmforge.adapters"
BUILTIN = {
    "custom-transformer": "llmforge.adapters.custom:CustomTransformerAdapter",
    "qwen2": "llmforge.adapters.qwen:Qwen2Adapter",
    "qwen3": "llmforge.adapters.qwen:Qwen3Adapter",
}
# The built-in adapters that load Hugging Face folders, known without importing them (and
# so torch and transformers): `models import` checks the architecture in milliseconds.
BUILTIN_IMPORTABLE = frozenset({"qwen2", "qwen3"})


def _targets() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def known_architectures() -> list[str]:
    """Every architecture an installed adapter handles, sorted."""
    return sorted(_targets())


def get_adapter(architecture: str) -> type[ModelAdapter]:
    """The adapter class for ``architecture``.

    Raises:
        AdapterNotFoundError: Listing the architectures that do have an adapter.
    """
    target = _targets().get(architecture)
    if target is None:
        raise AdapterNotFoundError(
            f"No adapter handles the architecture {brief(architecture)}.",
            f"Known architectures: {', '.join(known_architectures())}. A package can add one "
            f"through the {ENTRY_POINT_GROUP!r} entry-point group (see docs/adapters.md).",
        )
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        raise AdapterNotFoundError(
            f"The adapter registered for {architecture!r} ({target}) is not a ModelAdapter.",
            "Fix or uninstall the package that registers it.",
        )
    return cls


def importable_architectures() -> list[str]:
    """Architectures whose adapter loads Hugging Face folders (what ``models import`` takes)."""
    out = []
    for arch, target in sorted(_targets().items()):
        if BUILTIN.get(arch) == target:
            if arch in BUILTIN_IMPORTABLE:
                out.append(arch)
        elif getattr(get_adapter(arch), "importable", False):  # a third-party adapter
            out.append(arch)
    return out
