"""Rich rendering shared by the commands: errors, tables, trees and key/value panels."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from llmforge.untrusted import terminal_text


def stdout() -> Console:
    """A console on the current stdout (looked up at call time, so tests can capture it)."""
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    """A console on the current stderr."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str, hint: str | None) -> None:
    """Print one paragraph on stderr: what went wrong, then what to do."""
    text = terminal_text(f"Error: {message}" + (f" {hint}" if hint else ""))
    # soft_wrap: never break a line inside a path or a command the user may copy.
    stderr().print(text, markup=False, style="red", soft_wrap=True)


def print_warning(message: str) -> None:
    """Print a warning line on stderr."""
    text = terminal_text(f"Warning: {message}")
    stderr().print(text, markup=False, style="yellow", soft_wrap=True)


def cell(value: object) -> Text:
    """A table cell or tree label: untrusted text made printable, never read as Rich markup."""
    return Text(terminal_text(str(value), keep_newlines=False))


def print_json(obj: Any) -> None:
    """Print JSON for scripts: plain text, no Rich wrapping or colour.

    Non-ASCII text stays readable, but every character a terminal could act on (C1 controls
    such as the 8-bit CSI, DEL, bidi overrides, line separators) is written as a ``\\uXXXX``
    escape: the same JSON for a parser, inert on a screen. (``json`` escapes C0 itself.)
    """
    import sys

    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write(_INERT.sub(lambda m: json.dumps(m.group())[1:-1], text) + "\n")


# Outside strings, json.dumps writes only ASCII punctuation, digits and whitespace, so these
# characters can only occur inside strings, where an escape means the same character.
_INERT = re.compile("[\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A table with the given columns; every cell folds instead of being cut off."""
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(c if isinstance(c, Text) else cell(c) for c in r))
    return t


def key_values(title: str, pairs: Iterable[tuple[str, str]]) -> Table:
    """A two-column table of field names and values."""
    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column("field", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    for k, v in pairs:
        t.add_row(cell(k), v if isinstance(v, Text) else cell(v))
    return t


def lineage_tree(
    name: str,
    ancestors: Sequence[str],
    children: Sequence[str],
    origin: str | None,
    child_note: str = "child",
) -> Tree:
    """A tree from the oldest ancestor (or its hub id) down to ``name`` and its children.

    Args:
        name: The model in focus.
        ancestors: ``[parent, grandparent, ...]``.
        children: Models fine-tuned from ``name``.
        origin: Where the oldest ancestor came from (e.g. ``Qwen/Qwen2-0.5B (hub)``), or None.
        child_note: How children are labelled (``ft2 (child)``).
    """
    chain = list(reversed(ancestors))
    root_label = origin or (chain[0] if chain else name)
    tree = Tree(cell(root_label))
    node = tree
    labels = chain if origin else chain[1:] if chain else []
    for a in labels:
        node = node.add(cell(a))
    focus = cell(name)
    focus.stylize("bold")
    if origin or chain:
        node = node.add(focus)
    else:
        tree.label = focus
    for c in children:
        node.add(cell(f"{c} ({child_note})"))
    return tree
