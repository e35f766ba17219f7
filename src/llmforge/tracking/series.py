"""A run's metrics as the trackers and plots see them: ``metrics.jsonl`` records made tags.

``metrics.jsonl`` holds one JSON object per logged step (``kind: train``) or validation pass
(``kind: eval``). Every number in a record is a metric at the record's ``step``; this module
names them the same way for every consumer:

================  ===================  ======================
record key        tracker tag          ``runs plot --metric``
================  ===================  ======================
train ``loss``    ``train/loss``       ``loss``
train ``lr``      ``train/lr``         ``lr``
train ``grad_norm``  ``train/grad_norm``  ``grad_norm``
train ``tokens_per_s``  ``train/tokens_per_s``  ``tokens_per_s``
train ``elapsed`` ``train/elapsed_s``  ``elapsed``
eval ``val_loss`` ``val/loss``         ``val_loss``
eval ``val_ppl``  ``val/ppl``          ``val_ppl``
KIND ``KEY``      ``KIND/KEY``         ``KIND.KEY``
================  ===================  ======================

The last row is the hook for evaluation records that later commands will append (a benchmark
run at a checkpoint, say ``{"kind": "bench", "step": 200, "hellaswag_acc": 0.41}``): they reach
every tracker and plot with no change here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.tracking.metrics import METRICS_FILE

TRAIN, EVAL = "train", "eval"
# Keys of a record that are not metrics.
_NOT_METRICS = {"kind", "step"}
_TRAIN_TAGS = {"elapsed": "train/elapsed_s"}
_EVAL_TAGS = {"val_loss": "val/loss", "val_ppl": "val/ppl"}

LABELS = {
    "loss": "training loss",
    "val_loss": "validation loss",
    "val_ppl": "validation perplexity",
    "lr": "learning rate",
    "grad_norm": "gradient norm",
    "tokens_per_s": "tokens per second",
    "elapsed": "training time (s)",
}


def read_records(run_dir: Path, tail_bytes: int | None = None) -> list[dict[str, Any]]:
    """Every record of ``run_dir/metrics.jsonl`` with an integer step, in file order.

    A line cut short by a kill, or anything that is not a JSON object with a step, is skipped:
    the file is read by ``runs`` commands while a trainer appends to it. With ``tail_bytes``,
    only the records in the file's last ``tail_bytes`` bytes (``runs list`` of long runs).
    """
    path = run_dir / METRICS_FILE
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - tail_bytes) if tail_bytes else 0
            f.seek(start)
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0:
        lines = lines[1:]  # the first line is likely a part of one
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def metrics_size(run_dir: Path) -> int:
    """Bytes of ``metrics.jsonl`` (0 when missing)."""
    try:
        return (run_dir / METRICS_FILE).stat().st_size
    except OSError:
        return 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def tag_for(kind: str, key: str) -> str:
    """The tracker tag of ``key`` in a record of ``kind`` (see the module table)."""
    if kind == TRAIN:
        return _TRAIN_TAGS.get(key, f"train/{key}")
    if kind == EVAL:
        return _EVAL_TAGS.get(key, f"val/{key.removeprefix('val_')}")
    return f"{kind}/{key}"


def name_for(kind: str, key: str) -> str:
    """The ``--metric`` name of ``key`` in a record of ``kind``."""
    return key if kind in (TRAIN, EVAL) else f"{kind}.{key}"


def tagged_metrics(record: dict[str, Any]) -> dict[str, float]:
    """``{tag: value}`` of every number in a record (NaN and inf included: they happened)."""
    kind = str(record.get("kind", TRAIN))
    out = {}
    for key, value in record.items():
        number = _number(value)
        if key not in _NOT_METRICS and number is not None:
            out[tag_for(kind, key)] = number
    return out


@dataclass
class Curve:
    """One metric of one run, ready to draw.

    Attributes:
        name: The ``--metric`` name (``loss``, ``val_loss``, ...).
        steps: Steps, increasing.
        values: The metric at each step (NaN where it was not finite).
        elapsed: Training seconds at each step (from the nearest train record at or before it).
    """

    name: str
    steps: list[int]
    values: list[float]
    elapsed: list[float]

    def xs(self, axis: str, tokens_per_step: int | None) -> list[float]:
        """The x values for ``axis`` (``step``, ``tokens`` or ``time``)."""
        if axis == "time":
            return list(self.elapsed)
        if axis == "tokens":
            return [s * float(tokens_per_step or 0) for s in self.steps]
        return [float(s) for s in self.steps]


def curves(records: list[dict[str, Any]]) -> dict[str, Curve]:
    """Every metric of a run's records as a :class:`Curve`, keyed by ``--metric`` name.

    A step recorded twice (a file written by an older llmforge that did not truncate on
    resume) keeps its last value, as the resumed run's is the one that survived. One pass:
    a record's training time is the ``elapsed`` of the last train record before it (an eval
    record follows the train record of its step).
    """
    points: dict[str, dict[int, tuple[float, float]]] = {}
    elapsed = 0.0
    for rec in records:
        kind, step = rec.get("kind", TRAIN), rec["step"]
        if kind == TRAIN and type(rec.get("elapsed")) in (int, float):
            elapsed = float(rec["elapsed"])
        for key, value in rec.items():
            if type(value) not in (int, float) or key in _NOT_METRICS:
                continue  # bools and strings are not metrics
            value = float(value)
            name = key if kind in (TRAIN, EVAL) else f"{kind}.{key}"
            points.setdefault(name, {})[step] = (
                value if math.isfinite(value) else math.nan,
                elapsed,
            )
    out = {}
    for name, by_step in points.items():
        steps = sorted(by_step)
        out[name] = Curve(
            name, steps, [by_step[s][0] for s in steps], [by_step[s][1] for s in steps]
        )
    return out


def last_value(records: list[dict[str, Any]], key: str, up_to: int | None = None) -> Any:
    """The last value of ``key`` in records at steps up to ``up_to`` (None: all)."""
    for rec in reversed(records):
        if key in rec and (up_to is None or int(rec["step"]) <= up_to):
            return rec[key]
    return None
