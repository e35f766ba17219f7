"""From a hub dataset's columns to llmforge's records, with the lineage of the rows trained on.

Formats are recognised from the column names, after ``data_columns`` renamed them (a mapping
from llmforge's field to the dataset's column, e.g. ``{prompt: question, completion: answer}``):

==========================  ===========================  =====================================
columns                     llmforge record              loss
==========================  ===========================  =====================================
``messages``                ``chat``                     every assistant turn
``conversations``           ``chat`` (ShareGPT roles:    every assistant (``gpt``) turn
(``from``/``value``)        human/user, gpt/assistant,
                            system)
``instruction``, ``output``  ``prompt-completion`` with   the output and EOS
(``input`` optional)        :data:`ALPACA_PROMPT`, or
                            ``chat`` (one user turn, when
                            the model has a chat template:
                            :func:`hub_data.alpaca_layout`)
``prompt``, ``completion``  ``prompt-completion``        the completion and EOS
``text``                    ``jsonl-text``               every token (one stream)
==========================  ===========================  =====================================

Records are the dicts the local readers produce (:mod:`llmforge.data.data_files`), so batching
and the loss masks are the same code (:mod:`llmforge.data.batches`,
:mod:`llmforge.data.chat_templates`). They are not copied out of Arrow: :class:`HubRecords` reads
rows from the memory-mapped split on demand; one pass at load checks every row and computes
the fingerprint (sha256 over the records as trained, one canonical JSON line each).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmforge.data.data_files import DataFile, check_record, text_problem
from llmforge.data.hub_datasets import (
    LoadedSplits,
    hub_token,
    load_splits,
    prepared_config_id,
    remember_commit,
    resolve_commit,
)
from llmforge.data.hub_uri import HubDatasetRef, parse_hub_uri
from llmforge.errors import BadRecordError, DataError
from llmforge.importing.source import COMMIT
from llmforge.untrusted import brief

FIELDS = ("messages", "conversations", "instruction", "input", "output", "system", "prompt")
FIELDS += ("completion", "text")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SHAREGPT_ROLES |= {"system": "system"}
# The Stanford Alpaca layout (github.com/tatsu-lab/stanford_alpaca), with and without input.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
_KINDS = (  # (kind, record format, fields needed, optional fields), first match wins
    ("messages", "chat", ("messages",), ()),
    ("sharegpt", "chat", ("conversations",), ()),
    ("alpaca", "prompt-completion", ("instruction", "output"), ("input", "system")),
    ("prompt-completion", "prompt-completion", ("prompt", "completion"), ()),
    ("text", "jsonl-text", ("text",), ()),
)
BATCH_ROWS = 1000
# The most text one row may hold (as its canonical JSON line): a book is a few MB; a row of
# hundreds of MB is a broken export, and every example is copied while it is tokenized.
MAX_ROW_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ColumnPlan:
    """Which columns make which record.

    Attributes:
        kind: ``messages``, ``sharegpt``, ``alpaca``, ``prompt-completion`` or ``text``.
        format: The llmforge record format (``chat``, ``prompt-completion``, ``jsonl-text``).
        columns: llmforge field -> dataset column, for the fields used.
        alpaca_layout: ``prompt`` (:data:`ALPACA_PROMPT`) or ``chat`` (alpaca only).
    """

    kind: str
    format: str
    columns: dict[str, str]
    alpaca_layout: str = "prompt"


def plan_columns(
    columns: Sequence[str],
    data_columns: Mapping[str, str] | None,
    where: str,
    alpaca_layout: str = "prompt",
) -> ColumnPlan:
    """Recognise the format from the column names (after ``data_columns``).

    Raises:
        DataError: For an unknown ``data_columns`` field or column, or columns no format fits.
    """
    mapping = dict(data_columns or {})
    shown = ", ".join(brief(c, 40) for c in columns[:20]) or "none"
    for key, column in mapping.items():
        if key not in FIELDS:
            raise DataError(
                f"data_columns maps {brief(key, 40)}, which is not a field llmforge knows.",
                f"Use the fields {', '.join(FIELDS)}.",
            )
        if column not in columns:
            raise DataError(
                f"data_columns maps {key} to the column {brief(column, 40)}, but {where} has "
                f"the columns {shown}.",
                "Name one of those columns.",
            )
    view = {k: k for k in FIELDS if k in columns} | mapping  # field -> column
    for kind, fmt, need, optional in _KINDS:
        if all(f in view for f in need):
            used = {f: view[f] for f in need + optional if f in view}
            if unused := [f for f in mapping if f not in used]:
                raise DataError(
                    f"data_columns maps {', '.join(unused)}, but {where} reads as {kind} "
                    f"data (columns {', '.join(used.values())}), which does not use it.",
                    "Map every field of one format, e.g. both prompt and completion.",
                )
            if kind == "alpaca" and alpaca_layout == "chat":
                fmt = "chat"
            return ColumnPlan(kind, fmt, used, alpaca_layout if kind == "alpaca" else "")
    raise DataError(
        f"{where} has the columns {shown}, and llmforge recognises none of its formats: "
        "'messages' (chat), 'conversations' (ShareGPT from/value), 'instruction'/'input'/"
        "'output' (Alpaca), 'prompt'/'completion', or 'text'.",
        "Map your columns with data_columns in the config, e.g. data_columns: "
        "{prompt: question, completion: answer}.",
    )


def _sharegpt(turns: Any) -> list[dict[str, Any]] | str:
    if not isinstance(turns, list):
        return "'conversations' must be a list of {from, value} turns"
    out = []
    for j, t in enumerate(turns, start=1):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            return f"conversation turn {j} needs 'from' and 'value'"
        role = SHAREGPT_ROLES.get(str(t["from"]).lower())
        if role is None:
            known = "human, gpt, system (or user, assistant)"
            return f"conversation turn {j} is from {brief(t['from'], 30)}; llmforge knows {known}"
        out.append({"role": role, "content": t["value"]})
    return out


def _alpaca(row: dict[str, Any], plan: ColumnPlan) -> dict[str, Any] | str:
    c = plan.columns
    instruction, output = row[c["instruction"]], row[c["output"]]
    extra = row[c["input"]] if "input" in c else ""
    if not all(isinstance(v, str) for v in (instruction, output, extra or "")):
        return "'instruction', 'input' and 'output' must be strings"
    if plan.alpaca_layout == "chat":
        user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
        system = row[c["system"]] if "system" in c else None
        head = [{"role": "system", "content": system}] if system else []
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return {"messages": head + turns}
    if extra and extra.strip():
        prompt = ALPACA_PROMPT.format(instruction=instruction, input=extra)
    else:
        prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
    return {"prompt": prompt, "completion": output}


def _message(m: Any) -> Any:
    return {"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m


def to_record(row: dict[str, Any], plan: ColumnPlan) -> dict[str, Any] | str:
    """The llmforge record of one row, or why the row cannot be one."""
    c = plan.columns
    if plan.kind == "alpaca":
        record = _alpaca(row, plan)
    elif plan.kind == "sharegpt":
        turns = _sharegpt(row[c["conversations"]])
        record = turns if isinstance(turns, str) else {"messages": turns}
    elif plan.kind == "messages":
        msgs = row[c["messages"]]
        if isinstance(msgs, list):  # Arrow gives every struct field: keep role and content
            msgs = [_message(m) for m in msgs]
        record = {"messages": msgs}
    else:
        record = {f: row[col] for f, col in c.items()}
    if isinstance(record, str):
        return record
    return text_problem(record) or check_record(record, plan.format) or record


class HubRecords(Sequence[dict[str, Any]]):
    """The records of a split, read from its memory-mapped Arrow table on demand.

    Args:
        dataset: The split (only the used columns are read).
        plan: How columns become records.
        skipped: Row indices (0-based) left out (bad rows, with ``skip_bad_lines``).
    """

    def __init__(self, dataset: Any, plan: ColumnPlan, skipped: Sequence[int] = ()) -> None:
        self._ds = dataset.select_columns(list(dict.fromkeys(plan.columns.values())))
        self._plan = plan
        self._skipped = sorted(set(skipped))
        skip = set(self._skipped)
        self._rows = None if not skip else [i for i in range(len(dataset)) if i not in skip]

    def __len__(self) -> int:
        return len(self._ds) - len(self._skipped)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not isinstance(i, int):
            raise TypeError("HubRecords takes one integer index")
        row = self._ds[self._rows[i] if self._rows is not None else i]
        record = to_record(row, self._plan)
        assert not isinstance(record, str), record  # checked at load
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skip = set(self._skipped)
        for i, row in _rows(self._ds):
            if i not in skip:
                record = to_record(row, self._plan)
                assert not isinstance(record, str), record
                yield record


def _rows(ds: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    i = 0
    for batch in ds.iter(batch_size=BATCH_ROWS):
        names = list(batch)
        for values in zip(*(batch[n] for n in names), strict=True):
            yield i, dict(zip(names, values, strict=True))
            i += 1


@dataclass
class HubSplit:
    """One split read: the llmforge :class:`DataFile` and its lineage entry."""

    data: DataFile
    lineage: dict[str, Any] = field(default_factory=dict)


def read_split(
    loaded: LoadedSplits,
    split: str,
    data_columns: Mapping[str, str] | None,
    skip_bad_lines: bool,
    alpaca_layout: str = "prompt",
) -> HubSplit:
    """Check every row of ``split``, fingerprint the records and wrap them as a DataFile.

    Raises:
        DataError: For an empty split or unknown columns; BadRecordError for a bad row.
    """
    ds = loaded.splits[split]
    where = f"The dataset {loaded.ref.repo_id!r} (config {loaded.config!r}, split {split!r})"
    if len(ds) == 0:
        raise DataError(f"{where} is empty: it has no rows.", "Pick another split or config.")
    plan = plan_columns(ds.column_names, data_columns, where, alpaca_layout)
    digest, skipped = hashlib.sha256(), []
    for i, row in _rows(ds.select_columns(list(dict.fromkeys(plan.columns.values())))):
        record = to_record(row, plan)
        line = (
            ""
            if isinstance(record, str)
            else json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        )
        encoded = line.encode("utf-8")
        if len(encoded) > MAX_ROW_BYTES:
            record = f"it holds {len(encoded) / 2**20:.1f} MiB of text, over the limit of " + (
                f"{MAX_ROW_BYTES / 2**20:g} MiB per row"
            )
        if isinstance(record, str):
            if not skip_bad_lines:
                raise BadRecordError(
                    f"{where}, row {i + 1}: {record}.",
                    "Fix the dataset, map other columns with data_columns, or set "
                    "skip_bad_lines: true to skip bad rows (they are counted in a warning).",
                )
            skipped.append((i + 1, record))
            continue
        digest.update(encoded + b"\n")
    if len(skipped) == len(ds):
        raise DataError(f"{where} holds no valid rows ({len(skipped)} bad rows skipped).")
    records = HubRecords(ds, plan, [n - 1 for n, _ in skipped])
    source = loaded.ref.uri(loaded.sha)
    data = DataFile(source, plan.format, digest.hexdigest(), skipped=skipped, unit="row")
    data.records = records  # type: ignore[assignment]  # a Sequence, read on demand
    return HubSplit(data, _lineage(loaded, split, plan, len(records), digest.hexdigest()))


def _lineage(
    loaded: LoadedSplits, split: str, plan: ColumnPlan, rows: int, fingerprint: str
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "dataset": loaded.ref.repo_id,
        "revision": loaded.ref.revision,
        "sha": loaded.sha,
        "config": loaded.config,
        "path": loaded.ref.path,
        "split": split,
        "format": plan.kind,
        "columns": plan.columns,
        "rows": rows,
        "fingerprint": f"sha256:{fingerprint}",
    }
    if plan.kind == "alpaca":
        entry["alpaca_layout"] = plan.alpaca_layout
    return entry


@dataclass
class HubData:
    """The training split and the optional validation split of a hub dataset."""

    train: HubSplit
    val: HubSplit | None

    @property
    def lineage(self) -> dict[str, Any]:
        """The ``data.hub`` entry of ``meta.json``."""
        return {"train": self.train.lineage, "val": self.val.lineage if self.val else None}


def read_hub_data(
    uri: str,
    split: str = "train",
    val_split: str | None = None,
    config: str | None = None,
    data_columns: Mapping[str, str] | None = None,
    token: str | None = None,
    skip_bad_lines: bool = False,
    alpaca_layout: str = "prompt",
) -> HubData:
    """Read ``split`` (and ``val_split``) of the hub dataset ``uri`` as llmforge records.

    Raises:
        InvalidSourceError: For a malformed ``uri``.
        DataError, BadRecordError: For a missing config or split, an empty split, bad rows.
        HubError: Or a subclass (not found, gated, unreachable, revision not found).
    """
    if alpaca_layout not in ("prompt", "chat"):
        raise DataError(f"alpaca_layout is {brief(alpaca_layout, 20)}.", "Use prompt or chat.")
    ref: HubDatasetRef = parse_hub_uri(uri)
    token = token if token is not None else hub_token()
    pinned = ref.revision if ref.revision and COMMIT.fullmatch(ref.revision) else None
    if pinned and prepared_config_id(ref, pinned, config) is not None:
        sha = pinned  # a commit prepared before: no request at all
    else:
        sha = resolve_commit(ref, token)
    wanted = [split] + ([val_split] if val_split and val_split != split else [])
    loaded = load_splits(ref, sha, config, wanted, token)
    train = read_split(loaded, split, data_columns, skip_bad_lines, alpaca_layout)
    val = None
    if val_split:
        val = read_split(loaded, val_split, data_columns, skip_bad_lines, alpaca_layout)
    remember_commit(ref, sha)
    return HubData(train, val)
