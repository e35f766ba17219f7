"""Data of the ``local-text`` task: ``texts.jsonl`` next to this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(**_: Any) -> Any:
    """The ``test`` split as a ``datasets.DatasetDict`` (lm-eval's ``custom_dataset`` hook)."""
    import datasets

    lines = (HERE / "texts.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
