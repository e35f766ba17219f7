"""Reading training data files: plain text, or records (JSONL, JSON, CSV, Parquet).

Formats (``data_format``, or detected from the file):

- ``text``: a UTF-8 text file (``.txt`` and anything not listed below), one stream;
- ``jsonl-text``: records ``{"text": ...}``, one document each;
- ``prompt-completion``: records ``{"prompt": ..., "completion": ...}``;
- ``chat``: records ``{"messages": [{"role": ..., "content": ...}, ...]}``.

Records come from ``.jsonl`` (one JSON object a line), ``.json`` (a JSON array of objects,
or JSON lines), ``.csv`` (a header row names the fields) or ``.parquet`` (through the
``datasets`` library, when installed). A malformed record raises :class:`BadRecordError`
naming the file and the line, unless ``skip_bad_lines`` is set: then it is skipped and
counted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.data.chat_templates import check_messages
from llmforge.data.corpus import check_path_text, read_corpus
from llmforge.errors import BadRecordError, DataError
from llmforge.untrusted import brief, unicode_problem

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_KEYS = {
    "jsonl-text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "chat": ("messages",),
}


@dataclass
class DataFile:
    """One data file, read.

    Attributes:
        source: The path.
        format: ``text``, ``jsonl-text``, ``prompt-completion`` or ``chat``.
        sha256: Fingerprint of the file's bytes.
        text: The text (``text`` format only).
        records: The valid records (record formats only).
        skipped: ``(line, reason)`` of each bad record skipped.
        unit: What ``line`` counts: ``line`` (JSONL, CSV), ``record`` (a JSON document's
            items) or ``row`` (Parquet).
    """

    source: str
    format: str
    sha256: str
    text: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    unit: str = "line"


def detect_format(record: dict[str, Any]) -> str | None:
    """The record format a record's keys indicate, or None."""
    if "messages" in record:
        return "chat"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    if "text" in record:
        return "jsonl-text"
    return None


def check_record(record: Any, fmt: str) -> str | None:
    """Why ``record`` is not a valid record of ``fmt``, or None when it is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in _KEYS[fmt] if k not in record]
    if missing:
        found = _keys(record)
        need = " and ".join(repr(k) for k in _KEYS[fmt])
        return f"missing {', '.join(map(repr, missing))} ({fmt} records need {need}; keys: {found})"
    if fmt == "chat":
        return check_messages(record["messages"])
    for k in _KEYS[fmt]:
        if not isinstance(record[k], str):
            return f"{k!r} must be a string, got {type(record[k]).__name__}"
    if fmt == "jsonl-text" and not record["text"].strip():
        return "'text' is empty"
    if fmt == "prompt-completion" and not record["completion"].strip():
        return "'completion' is empty"
    return None


# How far a record may nest: real records are 2-4 levels deep (a chat message is 3); a bound
# keeps every later walk over a record (the checks, a chat template) far from the recursion limit.
MAX_RECORD_DEPTH = 64
_JSON_SHAPES = (
    'a JSON array of records ([{...}, ...]), an object with a "data" array of records '
    '({"data": [...]}, as `datasets` reads with field="data"), or one JSON object a line'
)


def _json(text: str) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, "bad JSON: ...")`` for a syntax error or a too deep value."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"bad JSON: {e.msg} (column {e.colno})"
    except RecursionError:  # the decoder recurses per nesting level
        return None, f"bad JSON: nested more than {MAX_RECORD_DEPTH} levels deep"


def _json_document(text: str) -> tuple[str, Iterator[tuple[int, Any]]] | None:
    """A ``.json`` file read as one document, or None when it is JSON lines.

    Accepted shapes: an array of records, an object with a ``"data"`` array, or a single
    record. The unit of the locations is ``record`` (a document's items have no line).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one value, then another: JSON lines
            return None
        return "line", iter([(e.lineno, f"bad JSON: {e.msg} (column {e.colno})")])
    except RecursionError:
        return "line", iter([(1, f"bad JSON: nested more than {MAX_RECORD_DEPTH} levels deep")])
    if isinstance(doc, dict) and detect_format(doc) is None and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if isinstance(doc, dict) and detect_format(doc) is not None:
        doc = [doc]
    if not isinstance(doc, list):
        got = f"an object with keys {_keys(doc)}" if isinstance(doc, dict) else _kind(doc)
        return "line", iter([(1, f"the file holds {got}; expected {_JSON_SHAPES}")])
    return "record", enumerate(doc, start=1)


def _csv_rows(text: str) -> Iterator[tuple[int, Any]]:
    # The whole file is in memory already: csv's default 128 KB field limit protects nothing
    # and would refuse a long document.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if None in row:  # more cells than the header names
                yield reader.line_num, f"{len(row[None])} more cell(s) than the header names"
            else:
                yield reader.line_num, dict(row)
    except csv.Error as e:
        yield reader.line_num, f"bad CSV: {e}"


def _rows(path: Path, raw: bytes) -> tuple[str, Iterator[tuple[int, Any]]]:
    """The unit of locations (``line``, ``record``, ``row``) and ``(n, object)`` per record.

    A record that cannot be parsed comes as ``(n, "why")`` instead of an object.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import datasets  # optional
        except ImportError as e:
            raise DataError(
                f"Reading {path} needs the 'datasets' library, which is not installed.",
                "pip install datasets, or convert the file to JSONL.",
            ) from e
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        return "row", ((i, dict(row)) for i, row in enumerate(ds, start=1))
    text = _decode(path, raw)
    if suffix == ".csv":
        return "line", _csv_rows(text)
    if suffix == ".json" and (doc := _json_document(text)) is not None:
        return doc
    return "line", _json_lines(text)


def _json_lines(text: str) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            value, problem = _json(line)
            yield n, problem if problem is not None else value


def text_problem(record: Any) -> str | None:
    """Why a parsed record cannot be trained on and saved: bad Unicode, or nested too deep."""
    stack: list[tuple[str, Any, int]] = [("", record, 0)]
    while stack:
        where, value, depth = stack.pop()
        if depth > MAX_RECORD_DEPTH:
            return f"the record is nested more than {MAX_RECORD_DEPTH} levels deep"
        if isinstance(value, str):
            problem = unicode_problem(value)
            if problem is not None:
                field = f"{where!r}" if where else "the record"
                return (
                    f"{field} is not valid Unicode text: it holds {problem} (a JSON \\u escape "
                    "must be a whole surrogate pair); no checkpoint could store it"
                )
        elif isinstance(value, dict):
            for k, v in value.items():
                key = str(k)
                if (problem := unicode_problem(key)) is not None:
                    return f"a key is not valid Unicode text: it holds {problem}"
                stack.append((f"{where}.{key}" if where else key, v, depth + 1))
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v, depth + 1) for i, v in enumerate(value)]
    return None


def _decode(path: Path, raw: bytes) -> str:
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports write one) is not part of the data.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"The data file {path} is not valid UTF-8 (byte {e.start}: {e.reason}).",
            "Save it as UTF-8.",
        ) from e


def _read_bytes(path: Path) -> bytes:
    hint = "Point data_path / val_data_path at an existing data file."
    check_path_text(path)
    if not path.exists():
        raise DataError(f"The data file {path} does not exist.", hint)
    if not path.is_file():
        raise DataError(f"The data path {path} is not a file.", hint)
    return path.read_bytes()


def read_data_file(path_str: str | None, data_format: str, skip_bad_lines: bool) -> DataFile:
    """Read one data file in ``data_format`` (``auto`` detects it).

    Raises:
        BadRecordError: For a malformed record (file and line), unless skipping.
        DataError: If the file is missing, unreadable, empty, or holds no valid record.
    """
    if path_str is None or data_format == "text":
        corpus = read_corpus(path_str)
        return DataFile(corpus.source, "text", corpus.sha256, text=corpus.text)
    path = Path(path_str).expanduser()
    if data_format == "auto" and path.suffix.lower() not in RECORD_SUFFIXES:
        corpus = read_corpus(path_str)
        return DataFile(corpus.source, "text", corpus.sha256, text=corpus.text)
    raw = _read_bytes(path)
    out = DataFile(str(path), data_format, hashlib.sha256(raw).hexdigest())
    fmt = None if data_format == "auto" else data_format
    unit, rows = _rows(path, raw)
    out.unit = unit
    for line, obj in rows:
        if isinstance(obj, str):
            problem: str | None = obj
        elif (problem := text_problem(obj)) is None:
            if fmt is None and isinstance(obj, dict):
                fmt = detect_format(obj)
            problem = check_record(obj, fmt) if fmt else _undetectable(obj)
        if problem is None:
            out.records.append(obj)
        elif skip_bad_lines:
            out.skipped.append((line, problem))
        else:
            raise BadRecordError(
                f"{path}, {unit} {line}: {problem}.",
                "Fix the line, or set skip_bad_lines: true to skip bad lines (they are "
                "counted in a warning).",
            )
    if not out.records:
        why = f" ({len(out.skipped)} bad lines skipped)" if out.skipped else ""
        raise DataError(f"The data file {path} holds no valid records{why}.", _FORMAT_HINT)
    out.format = fmt or data_format
    return out


_FORMAT_HINT = (
    "Each record needs 'text', 'prompt' and 'completion', or 'messages' (a list of "
    "{role, content}); see the README's 'Training data' section."
)


def _undetectable(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    return f"no 'text', 'prompt'/'completion' or 'messages' key (keys: {_keys(obj)})"


def _keys(obj: dict[str, Any]) -> str:
    """The keys of a record for a message: bounded in number and length."""
    shown = [brief(k, 40) for k in list(obj)[:8]]
    more = f" and {len(obj) - 8} more" if len(obj) > 8 else ""
    return (", ".join(shown) or "none") + more


def _kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def skipped_warning(f: DataFile) -> str | None:
    """The warning for the bad lines skipped in ``f``, or None."""
    if not f.skipped:
        return None
    line, why = f.skipped[0]
    return (
        f"Skipped {len(f.skipped)} bad {f.unit}(s) of {f.source} (skip_bad_lines is on); the "
        f"first, {f.unit} {line}: {why}."
    )
