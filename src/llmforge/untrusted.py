"""Reading and showing text llmforge did not write: the one YAML loader, the one sanitiser.

Configs, model cards, licenses, file names from a repository and values from a data file are
untrusted: a 440-byte YAML file can expand to gigabytes through aliases ("billion laughs"), and
a license can carry terminal escape sequences that hide or fake what the user accepts. Every
YAML document llmforge reads goes through :func:`load_yaml`, every piece of untrusted text that
reaches a terminal goes through :func:`terminal_text`, and every value echoed into a message
goes through :func:`brief`, and every string that llmforge will save (a data file's text, a
chat template, a path) is checked by :func:`unicode_problem` when it is read.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

import yaml

# A config or a model card's metadata is a few hundred nodes; a million is far beyond any
# honest document and still composes in well under a second.
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 200
MAX_YAML_BYTES = 4 << 20


class UntrustedYAMLError(ValueError):
    """A YAML document is too large, too deep, or expands through aliases beyond the bounds."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that measures the document's expanded size before constructing anything.

    Aliases make the node graph a DAG whose expansion can be exponential in its size; the
    composed graph itself is small, so the expanded size is computed on it (memoised per node)
    and a document over :data:`MAX_YAML_NODES` is refused before it is turned into Python.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise UntrustedYAMLError("the document refers to itself through an alias")
        if depth > MAX_YAML_DEPTH:
            raise UntrustedYAMLError(f"the document is nested more than {MAX_YAML_DEPTH} deep")
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
                if total > MAX_YAML_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
                if total > MAX_YAML_NODES:
                    break
        on_path.discard(key)
        if total > MAX_YAML_NODES:
            raise UntrustedYAMLError(
                f"the document expands to more than {MAX_YAML_NODES:,} values (through aliases "
                "or sheer size)"
            )
        sizes[key] = total
        return total

    size(root, 0)


def load_yaml(text: str) -> Any:
    """Parse one YAML document safely and within bounds.

    Only plain data is built (``yaml.SafeLoader``); a document larger than 4 MiB, nested deeper
    than 200 levels, or expanding to more than 100,000 values through aliases is refused before
    any Python object is built from it.

    Args:
        text: The YAML source.

    Returns:
        The parsed value (``None`` for an empty document).

    Raises:
        UntrustedYAMLError: If the document is over one of the bounds.
        yaml.YAMLError: If it is not valid YAML.
    """
    if len(text) > MAX_YAML_BYTES:
        raise UntrustedYAMLError(f"the document is larger than {MAX_YAML_BYTES >> 20} MiB")
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError as e:  # the composer recurses per nesting level
        raise UntrustedYAMLError(f"the document is nested more than {MAX_YAML_DEPTH} deep") from e
    finally:
        loader.dispose()


class UntrustedJSONError(ValueError):
    """A JSON document nested too deeply to parse (json recurses once per level)."""


def load_json(raw: str | bytes, **options: Any) -> Any:
    """Parse a JSON document llmforge did not write itself, or wrote and may find damaged.

    ``json.loads`` recurses once per nesting level, so ``[[[[...`` 100,000 deep raises a
    ``RecursionError`` that no ``except ValueError`` catches: here it is a ``ValueError`` like
    every other malformed document, so a damaged ``meta.json`` is "damaged", not a crash.

    Args:
        raw: The document (bytes are decoded as UTF-8).
        **options: Passed to ``json.loads`` (e.g. ``object_pairs_hook``).

    Returns:
        The parsed value.

    Raises:
        ValueError: If it is not valid JSON (``json.JSONDecodeError``, ``UnicodeDecodeError``)
            or nested too deeply (:class:`UntrustedJSONError`).
    """
    try:
        return json.loads(raw, **options)
    except RecursionError as e:
        raise UntrustedJSONError("the JSON document is nested too deeply") from e


# ESC-introduced sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), DCS/SOS/PM/APC
# (ESC P/X/^/_ ... ESC \), and two-character escapes. The 8-bit C1 forms are caught below.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[@-Z\\-_]?",
)


def terminal_text(text: str, *, keep_newlines: bool = True) -> str:
    """Make untrusted text safe to print on a terminal.

    Removes terminal escape sequences (colours, cursor movement, window titles, hyperlinks),
    every other control character (C0 and C1, including a bare carriage return that would let
    a later line overwrite an earlier one), and Unicode bidirectional overrides that can make
    text read differently from what it is. Tabs stay; newlines stay unless ``keep_newlines`` is
    false (then they become spaces). Rich markup is not interpreted by llmforge's output
    functions, so brackets need no escaping here.

    Args:
        text: Text from a repository, a data file, a registry entry or the user.
        keep_newlines: Keep line breaks (a license excerpt) or fold them (a table cell).

    Returns:
        The cleaned text.
    """
    text = _ESCAPE_SEQUENCE.sub("", text)
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\n" if keep_newlines else " ")
        elif ch == "\t":
            out.append(ch)
        elif ch == "\r":
            continue
        elif unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS:
            out.append("\ufffd" if unicodedata.category(ch) == "Cs" else "")
        else:
            out.append(ch)
    return "".join(out)


_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def brief(value: Any, limit: int = 120) -> str:
    """A short, printable ``repr`` of a value for an error message.

    A value from a config or a data file can be megabytes long (or expand to gigabytes); an
    error message shows its start and its size instead.

    Args:
        value: Anything.
        limit: The most characters of the representation kept.

    Returns:
        ``repr(value)``, cut to ``limit`` characters with the full length noted, and safe for a
        terminal.
    """
    try:
        text = repr(value) if not isinstance(value, str) else repr(value[: limit * 4])
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        full = len(value) if isinstance(value, str | bytes | list | dict) else None
        size = f", {full:,} long" if full is not None else ""
        text = f"{text[:limit]}... ({type(value).__name__}{size})"
    return terminal_text(text, keep_newlines=False)


# A lone UTF-16 surrogate (U+D800..U+DFFF) can sit in a Python str (a JSON escape like "\\ud800",
# a YAML "\\ud800", or a byte that is not UTF-8 in a file name or argv, kept by surrogateescape
# as U+DC80..U+DCFF), but it cannot be encoded as UTF-8: a file holding it can never be written.
_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8, or None when it can.

    Text read from JSON, YAML, a file name or the command line can hold code points that no
    UTF-8 file can store; finding them when the text is read turns a failure at the first
    save (hours later) into a clear error at the start.

    Args:
        text: A string from a data file, a config, a file name or the command line.

    Returns:
        A phrase such as ``"a lone surrogate \\ud800 at character 5"`` or ``"the byte 0xff
        (not UTF-8) at character 3"``, or None.
    """
    found = _SURROGATE.search(text)
    if found is None:
        return None
    code, where = ord(found.group()), found.start() + 1
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: a raw byte that was not UTF-8
        return f"the byte 0x{code - 0xDC00:02x} (not UTF-8) at character {where}"
    return f"a lone surrogate \\u{code:04x} at character {where}"
