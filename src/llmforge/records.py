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

from llmforge.chat import check_messages
from llmforge.data import read_corpus
from llmforge.errors import BadRecordError, DataError

RECORD_FORMATS = ("jsonl-text", "prompt-completion", "chat")
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
        format: ``text`` or one of :data:`RECORD_FORMATS`.
        sha256: Fingerprint of the file's bytes.
        text: The text (``text`` format only).
        records: The valid records (record formats only).
        skipped: ``(line, reason)`` of each bad record skipped.
    """

    source: str
    format: str
    sha256: str
    text: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


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
        found = ", ".join(map(repr, record)) or "none"
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


def _rows(path: Path, raw: bytes) -> Iterator[tuple[int, Any | str]]:
    """``(line, object)`` per record; a JSON syntax error yields ``(line, "bad JSON: ...")``."""
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
        for i, row in enumerate(ds, start=1):
            yield i, dict(row)
        return
    text = _decode(path, raw)
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            yield reader.line_num, dict(row)
        return
    stripped = text.lstrip()
    if suffix == ".json" and stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            yield e.lineno, f"bad JSON: {e.msg} (column {e.colno})"
            return
        yield from enumerate(items, start=1)
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            yield n, f"bad JSON: {e.msg} (column {e.colno})"


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"The data file {path} is not valid UTF-8 (byte {e.start}: {e.reason}).",
            "Save it as UTF-8.",
        ) from e


def _read_bytes(path: Path) -> bytes:
    hint = "Point data_path / val_data_path at an existing data file."
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
    for line, obj in _rows(path, raw):
        if isinstance(obj, str):
            problem: str | None = obj
        else:
            if fmt is None and isinstance(obj, dict):
                fmt = detect_format(obj)
            problem = check_record(obj, fmt) if fmt else _undetectable(obj)
        if problem is None:
            out.records.append(obj)
        elif skip_bad_lines:
            out.skipped.append((line, problem))
        else:
            raise BadRecordError(
                f"{path}, line {line}: {problem}.",
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
    keys = ", ".join(map(repr, obj)) or "none"
    return f"no 'text', 'prompt'/'completion' or 'messages' key (keys: {keys})"


def skipped_warning(f: DataFile) -> str | None:
    """The warning for the bad lines skipped in ``f``, or None."""
    if not f.skipped:
        return None
    line, why = f.skipped[0]
    return (
        f"Skipped {len(f.skipped)} bad line(s) of {f.source} (skip_bad_lines is on); the "
        f"first, line {line}: {why}."
    )
