"""Dataset repositories for the local hub (tests/hubserver.py): one of each format llmforge
recognises, and the broken ones its bad-input tests need.

:func:`serve_datasets` writes them once per session and adds them to a :class:`LocalHub`
as ``org/NAME`` (``org/gated`` needs the token ``hf_ok``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hubserver import HubRepo, LocalHub

CHAT_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: chat/train.jsonl
  - split: test
    path: chat/test.jsonl
- config_name: short
  data_files:
  - split: train
    path: chat/test.jsonl
---
# A chat set
"""


def messages_row(i: int) -> dict[str, Any]:
    """A two-turn conversation about ``i + i``."""
    turns = [("user", f"What is {i} + {i}?"), ("assistant", f"{2 * i}.")]
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_alpaca(root: Path, n_train: int = 8, tag: str = "") -> Path:
    """A parquet Alpaca set laid out as the hub's convention ``data/{split}-*.parquet``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", 3)):
        rows = {
            "instruction": [f"Double {i}.{tag}" for i in range(n)],
            "input": ["" if i % 2 else f"n = {i}" for i in range(n)],
            "output": [str(2 * i) for i in range(n)],
        }
        pq.write_table(pa.table(rows), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def _sets(root: Path) -> dict[str, Path]:
    chat = root / "chat"
    write_jsonl(chat / "chat" / "train.jsonl", [messages_row(i) for i in range(6)])
    write_jsonl(chat / "chat" / "test.jsonl", [messages_row(i) for i in range(6, 8)])
    (chat / "README.md").write_text(CHAT_CARD)
    convo = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}]
    share = [{"conversations": [*convo, {"from": "gpt", "value": f"Hello {i}"}]} for i in range(4)]
    qa = [{"question": f"q{i}", "answer": f"a{i}", "id": i} for i in range(3)]
    bad = [messages_row(0), {"messages": [{"role": "user", "content": "x"}]}]
    out = {
        "alpaca": make_alpaca(root / "alpaca"),
        "chat": chat,
        "sharegpt": write_jsonl(root / "sharegpt" / "sharegpt_train.jsonl", share).parent,
        "text": write_jsonl(
            root / "text/train.jsonl", [{"text": f"Doc {i}. " * 5} for i in range(5)]
        ).parent,
        "qa": write_jsonl(root / "qa" / "train.jsonl", qa).parent,
        "bad": write_jsonl(root / "bad" / "train.jsonl", bad).parent,
        "huge": write_jsonl(root / "huge" / "train.jsonl", [{"text": "x" * 5000}]).parent,
    }
    empty = write_jsonl(root / "empty" / "train.jsonl", [{"text": "one document"}]).parent
    (empty / "test.jsonl").write_text("")
    broken = root / "broken"
    broken.mkdir()
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), broken / "train.parquet")
    return out | {"empty": empty, "broken": broken}


def serve_datasets(hub: LocalHub, root: Path) -> dict[str, HubRepo]:
    """Add every set (written under ``root``) to ``hub``; returns the repositories by name."""
    repos = {
        name: hub.add_dataset(f"org/{name}", folder, revisions={"v1"})
        for name, folder in _sets(root).items()
    }
    repos["gated"] = hub.add_dataset("org/gated", root / "alpaca", gated=True, tokens={"hf_ok"})
    return repos
