"""Data of the ``llmforge-smoke`` task: the JSONL files next to this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPLITS = ("train", "test")


def _read(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load(**_: Any) -> Any:
    """The task's splits as a ``datasets.DatasetDict`` (lm-eval's ``custom_dataset`` hook).

    lm-eval passes the task's ``metadata`` and ``dataset_kwargs`` as keyword arguments;
    none are needed here.
    """
    import datasets

    return datasets.DatasetDict(
        {s: datasets.Dataset.from_list(_read(HERE / f"{s}.jsonl")) for s in SPLITS}
    )
