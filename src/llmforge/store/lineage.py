"""The fine-tuning lineage: which model a run started from, and where that model came from.

Every checkpoint's ``meta.json`` holds ``lineage``, a list read nearest first::

    ["my-ft", "qwen-base", "hf:Qwen/Qwen2-0.5B"]

- the first element is the registry model whose weights the run started from (the same
  name as ``fine_tuned_from``),
- each next element is the registry parent (``fine_tuned_from``) of the one before,
- the last element, when known, is the *origin* of the oldest model: ``hf:<hub id>`` for a
  model imported from the Hugging Face Hub, ``local:<folder name>`` for one imported from a
  folder. Origins are recognised by their prefix; model names never contain ``:``.

A from-scratch run has ``[]``. A branch (``llmforge train --init-from CKPT --name NEW``)
starts from the registry model ``NEW`` that holds the checkpoint's weights, so its lineage is
``["NEW", <the checkpoint's lineage>...]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmforge.store.registry import ModelEntry, ModelRegistry

ORIGIN_PREFIXES = {"huggingface": "hf:", "local": "local:"}


def is_origin(item: str) -> bool:
    """Whether a lineage element is an origin (``hf:...``) rather than a model name."""
    return ":" in item


def origin_of(entry: ModelEntry) -> str | None:
    """Where the oldest known model of a chain came from, or None (trained from scratch).

    A fine-tune whose parent was deleted still knows its origin: registering a checkpoint
    records it in ``details["origin"]``.
    """
    prefix = ORIGIN_PREFIXES.get(entry.source)
    if prefix and entry.model_id:
        return prefix + entry.model_id
    origin = entry.details.get("origin")
    return origin if isinstance(origin, str) and is_origin(origin) else None


def registry_lineage(registry: ModelRegistry, name: str) -> list[str]:
    """The lineage of a run that starts from the registry model ``name``.

    Returns:
        ``[name, parent, grandparent, ..., origin]`` (see the module docstring).

    Raises:
        ModelNotFoundError: If ``name`` is not registered.
    """
    entry = registry.get(name)
    chain = [name, *registry.lineage(name)]
    oldest = entry
    for ancestor in reversed(chain):
        if registry.exists(ancestor):
            oldest = registry.get(ancestor)
            break
    origin = origin_of(oldest)
    return chain + ([origin] if origin else [])


def split(lineage: Sequence[str]) -> tuple[list[str], str | None]:
    """``(model names nearest first, origin or None)`` of a lineage list."""
    names = [x for x in lineage if not is_origin(x)]
    origins = [x for x in lineage if is_origin(x)]
    return names, (origins[-1] if origins else None)


def origin_label(origin: str | None) -> str | None:
    """A human label for an origin: ``Qwen/Qwen2-0.5B (hub)``, ``my-folder (local import)``."""
    if origin is None:
        return None
    kind, _, ident = origin.partition(":")
    return f"{ident} ({'hub' if kind == 'hf' else 'local import'})"


def chain_text(head: str, lineage: Sequence[str]) -> str:
    """One line: ``run r <- my-ft <- qwen-base <- hf:Qwen/Qwen2-0.5B``."""
    return " <- ".join([head, *lineage]) if lineage else f"{head} (trained from scratch)"
