"""Hypothesis strategies: documents llmforge wrote, changed the way damage or an attacker would.

A mutation keeps most of a real document (so the code under test gets past its first checks)
and breaks one thing: a value of the wrong type or size, a key gone or added, a hostile string
(a path, markup, escape sequences, a lone surrogate), or the whole file replaced by bytes.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

HOSTILE_STRINGS = st.sampled_from(
    [
        "",
        "..",
        "../../outside",
        "/etc/passwd",
        "registry.json",
        ".cache",
        "[/]",
        "[bold red]x[/bold red]",
        "\x1b[2J\x1b[31mred",
        "\u202eevil",
        "\ud800",
        "a" * 5000,
        "nan",
        "1e999",
        "-1",
        "step-000004",
        "scratch",
        "base",
        "models/base",
        "\x00",
        "C:\\evil",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    HOSTILE_STRINGS,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (a tuple of keys / indices) to a value inside ``doc``."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:8]):
            found += _paths(value, (*prefix, i))
    return found


def _replace(doc: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    if delete and not rest:
        del copy[head]
        return copy
    copy[head] = _replace(copy[head], rest, value, delete)
    return copy


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any) -> bytes:
    """The bytes of ``doc`` with one thing broken (or, rarely, not JSON at all)."""
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "bytes"]))
    if kind == "bytes":
        return draw(
            st.one_of(
                st.binary(max_size=64),
                st.just(json.dumps(doc)[: draw(st.integers(0, 200))].encode()),
                st.just(b"[" * 100_000),
            )
        )
    paths = _paths(doc)
    # Half the time a top-level key: deep paths (RNG states, loss lists) outnumber them, and
    # the keys the code reads by name would otherwise come up too rarely.
    top = [p for p in paths if len(p) == 1]
    path = draw(st.sampled_from(top if top and draw(st.booleans()) else paths))
    if kind == "delete" and path:
        doc = _replace(doc, path, None, delete=True)
    elif kind == "add":
        target = draw(st.sampled_from([p for p in paths if _is_dict(doc, p)] or [()]))
        key = draw(st.one_of(st.text(max_size=12), HOSTILE_STRINGS))
        doc = _replace(doc, target, {**_get(doc, target), key: draw(JSON_VALUES)})
    else:
        doc = _replace(doc, path, draw(JSON_VALUES))
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _is_dict(doc: Any, path: tuple) -> bool:
    return isinstance(_get(doc, path), dict)
