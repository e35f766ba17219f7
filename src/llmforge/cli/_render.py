"""Rich rendering shared by the commands: errors, tables, trees and key/value panels."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from llmforge.untrusted import terminal_text


def stdout() -> Console:
    """A console on the current stdout (looked up at call time, so tests can capture it).

    No emoji codes: a ``:name:`` in a path or a model name stays the text it is.
    """
    return Console(highlight=False, soft_wrap=True, emoji=False)


def stderr() -> Console:
    """A console on the current stderr."""
    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def print_text(text: str, console: Console | None = None) -> None:
    """Print a line that may hold untrusted values (a path, a checkpoint's field, model output).

    The text is made printable (:func:`terminal_text`: escape sequences and control characters
    go, newlines stay) and never read as Rich markup; long lines are not broken, so a path or a
    command can be copied whole.
    """
    (console or stdout()).print(terminal_text(text), markup=False, soft_wrap=True)


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


@dataclass(frozen=True)
class Column:
    """A table column, and how it gives way on a narrow terminal.

    Attributes:
        header: The column's title.
        short: A shorter title used when the table does not fit at full width.
        drop: 0: always shown; otherwise dropped when the table does not fit, highest first.
        wrap: The cells may take two lines (broken at spaces); otherwise a cell keeps one line
            and is cut with an ellipsis when even the remaining columns do not fit.
    """

    header: str
    short: str | None = None
    drop: int = 0
    wrap: bool = False


def _two_lines(text: str) -> int:
    """The narrowest width at which ``text`` takes at most two lines when broken at spaces."""
    best = len(text)
    for i, ch in enumerate(text):
        if ch == " ":
            best = min(best, max(len(text[:i].rstrip()), len(text[i + 1 :].lstrip())))
    return best


def _widths(cols: Sequence[Column], rows: Sequence[Sequence[Text]], short: bool) -> list[int]:
    """Per column the narrowest width keeping every cell (and the title) within its lines."""
    out = []
    for i, c in enumerate(cols):
        title = (c.short or c.header) if short else c.header
        fit = _two_lines if c.wrap else len  # a column that does not wrap keeps its title whole
        out.append(max(fit(x) for x in [title, *(r[i].plain for r in rows)]))
    return out


def _natural(cols: Sequence[Column], rows: Sequence[Sequence[Text]], short: bool) -> list[int]:
    titles = [(c.short or c.header) if short else c.header for c in cols]
    return [max(len(x) for x in [t, *(r[i].plain for r in rows)]) for i, t in enumerate(titles)]


def _cells(cols: Sequence[Column], rows: Sequence[Sequence[Text]], short: bool) -> list[int]:
    return [max([0, *(len(r[i].plain) for r in rows)]) for i in range(len(cols))]


def table(
    title: str | None,
    columns: Sequence[str | Column],
    rows: Iterable[Sequence[str | Text]],
    width: int | None = None,
) -> Table:
    """A table that stays readable at ``width`` (default: the terminal's).

    When the table does not fit, titles are shortened (``short``), columns dropped (``drop``,
    highest first) until the rest fits with every ``wrap`` cell on at most two lines and every
    other cell on one, and the spare room goes to the ``wrap`` columns. A table that fits no
    way cuts its cells with an ellipsis rather than breaking a row over many lines.
    """
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [[c if isinstance(c, Text) else cell(c) for c in r] for r in rows]
    width = width or stdout().width
    keep = list(range(len(cols)))

    def pick(f: Any, short: bool) -> list[int]:
        return f([cols[i] for i in keep], [[r[i] for i in keep] for r in cells], short)

    def frame() -> int:  # padding and borders of the kept columns
        return 3 * len(keep) + 1

    short = sum(pick(_natural, False)) + frame() > width
    sizes: list[int] | None = None
    if short:
        for i in sorted((i for i in keep if cols[i].drop), key=lambda i: -cols[i].drop):
            if sum(pick(_widths, True)) + frame() <= width:
                break
            keep.remove(i)
        sizes = pick(_widths, True)
        spare = width - frame() - sum(sizes)
        if spare < 0:
            sizes = None  # nothing fits: Rich shares the room and cuts cells with "…"
        else:  # widen the wrapping columns: rows onto one line first, then titles
            for target in (pick(_cells, True), pick(_natural, True)):
                for j in sorted(range(len(keep)), key=lambda j: target[j] - sizes[j]):
                    grow = max(0, min(spare, target[j] - sizes[j])) if cols[keep[j]].wrap else 0
                    sizes[j] += grow
                    spare -= grow
    t = Table(title=title, title_justify="left", header_style="bold")
    for n, i in enumerate(keep):
        c = cols[i]
        t.add_column(
            (c.short or c.header) if short else c.header,
            no_wrap=not c.wrap,
            overflow="fold" if c.wrap else "ellipsis",
            width=sizes[n] if sizes else None,
        )
    for r in cells:
        t.add_row(*(r[i] for i in keep))
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
