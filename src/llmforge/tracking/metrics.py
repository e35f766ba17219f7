"""``metrics.jsonl``: one JSON object per logged step or evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmforge.errors import TrainingError
from llmforge.fsutil import atomic_write_text, failure_cause
from llmforge.tracking.callback import Callback
from llmforge.untrusted import load_json

METRICS_FILE = "metrics.jsonl"


class MetricsWriter(Callback):
    """Appends step and evaluation records to ``run_dir/metrics.jsonl`` (flushed each line).

    Args:
        run_dir: The run's folder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE

    def _append(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise TrainingError(
                f"Could not append to {self.path}: {failure_cause(e)} (is the disk full?).",
                "Free some disk space, then continue with --resume latest.",
            ) from e

    def on_step(self, metrics: dict[str, Any]) -> None:
        self._append({"kind": "train", **metrics})

    def on_eval(self, metrics: dict[str, Any]) -> None:
        self._append({"kind": "eval", **metrics})


def truncate_metrics(run_dir: Path, after_step: int) -> None:
    """Drop records past ``after_step``: a resumed run recomputes those steps."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(load_json(line).get("step", 0)) <= after_step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a line cut short by a crash
    atomic_write_text(path, "".join(line + "\n" for line in kept))
