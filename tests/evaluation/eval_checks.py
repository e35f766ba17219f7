"""What the evaluation tests compare with: an independent plain-transformers loop, texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TASKS = Path(__file__).resolve().parent / "tasks"
TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Fine-tuning adapts a pretrained model to a new task with a little data.",
    "def add(a, b):\n    return a + b\n" * 3,
    "1 2 3 4 5 6 7 8 9 10 100 1000 — ünïcödé ✓ 漢字",
    "Qwen",
    "x",
]
CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a fox."},
        {"role": "assistant", "content": "The quick brown fox."},
        {"role": "user", "content": "And a dog?"},
        {"role": "assistant", "content": "The lazy dog."},
    ],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}],
]


def reference_nll(model, ids: list[int], scored: list[bool], context: int, stride: int):
    """Plain transformers, one document, one window at a time: (total NLL, tokens).

    The Hugging Face perplexity guide's loop over the definition in heldout.py: the first
    window scores targets 1..context, each next one the next ``stride`` targets with the
    ``context`` tokens before its last target as input; log_softmax in float64, gather, sum of
    the masked targets.
    """
    total, count, done, last = 0.0, 0, 0, len(ids) - 1
    while done < last:
        end = min(done + (context if done == 0 else stride), last)
        begin = max(0, end - context)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[begin:end]])).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        for k, j in enumerate(range(begin + 1, end + 1)):
            if j > done and scored[j]:
                total -= float(logp[k, ids[j]])
                count += 1
        done = end
    return total, count


def reference(model, docs, context: int, stride: int):
    """Token-weighted loss, tokens and per-document NLL of ``docs`` by :func:`reference_nll`."""
    sums = [reference_nll(model, d.ids.tolist(), d.scored.tolist(), context, stride) for d in docs]
    total, tokens = sum(s for s, _ in sums), sum(n for _, n in sums)
    return total / tokens, tokens, [s for s, _ in sums]


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * abs(b)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def local_task(folder: Path) -> Path:
    """tasks/local_arith with absolute data paths (``datasets`` resolves relative ones
    against the working directory, not the YAML's folder)."""
    import yaml

    src = TASKS / "local_arith"
    cfg = yaml.safe_load((src / "local_arith.yaml").read_text(encoding="utf-8"))
    cfg["dataset_kwargs"]["data_files"] = {s: str(src / f"{s}.jsonl") for s in ("train", "test")}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "local_arith.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return folder


def per_sample(out: dict, task: str) -> list[float]:
    """Every choice's log-likelihood, document by document."""
    return [float(r[0]) for s in out["samples"][task] for r in s["filtered_resps"]]


def compare(bridge: dict, native: dict, tasks, samples: int = 8) -> None:
    """The bridge's results equal lm-eval's own: metrics exactly, every choice within 1e-5."""
    from llmforge.evaluation import harness

    ours = {r.task: r for r in harness.task_results(bridge)}
    theirs = {r.task: r for r in harness.task_results(native)}
    for task in tasks:
        assert ours[task].metrics == theirs[task].metrics, task
        assert ours[task].samples == theirs[task].samples == samples
        a, b = per_sample(bridge, task), per_sample(native, task)
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
