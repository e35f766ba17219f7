"""Shared setup of the GGUF export tests: one workspace, built once, and llama.cpp helpers.

The workspace holds the tiny Qwen2 imported from the local hub as ``tiny-base``, a chat
fine-tune ``chat`` of it (full weights) that has learnt to answer "Say hello." with
:data:`REPLY` and then ``<|im_end|>``, a LoRA run ``lora`` on the same data, a short run
``sys`` whose conversations all open with the system prompt :data:`SYSTEM`, and a tiny
untied Qwen3 imported from a folder as ``tiny-qwen3``. Every test copies what it writes to
``tmp_path``; the workspace itself is never changed (tests that check refusals snapshot it).

GGUF files are loaded by llama.cpp itself (llama-cpp-python). Quantized files are loaded
without llama.cpp's "extra buffer types": llama-cpp-python 0.3.36 on a CPU with AMX crashes
(SIGSEGV) in the AMX repack of Q8_0 / K-quant weights on batched evaluation, for llama.cpp's
own converter's files just as for ours (docs/export.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

# OpenMP threads that spin while waiting starve each other (torch's and llama.cpp's) on a
# shared machine: set before either starts its threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import yaml
from gguf_helpers import LICENSE_TEXT, PROMPT, REPLY, SYSTEM, TRAIN, export

from hubserver import LocalHub
from tiny_models import build_tiny_model
from train_helpers import import_from_local_hub, run_cli

HUB_ID = "Qwen/Qwen2-Tiny"
# Without llama.cpp (the test and dev extras install it) there is nothing to check a GGUF with.
if not all(importlib.util.find_spec(m) for m in ("gguf", "llama_cpp")):
    collect_ignore_glob = ["test_*.py"]


def _train(ws: Path, root: Path, name: str, system: str | None = None, **extra: object) -> None:
    data = root / f"{name}.jsonl"
    head = [{"role": "system", "content": system}] if system else []
    row = {"messages": [*head, *PROMPT, {"role": "assistant", "content": REPLY}]}
    data.write_text("\n".join(json.dumps(row) for _ in range(8)) + "\n", encoding="utf-8")
    cfg = root / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({**TRAIN, "data_path": str(data), **extra}), encoding="utf-8")
    res = run_cli(ws, "train", str(cfg), "--run-name", name)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="session")
def gguf_ws(tmp_path_factory: pytest.TempPathFactory, hub: LocalHub, tiny_qwen_repo: Path) -> Path:
    """The workspace described in the module docstring (built once per session)."""
    root = tmp_path_factory.mktemp("gguf-ws")
    ws = root / "ws"
    import_from_local_hub(hub, HUB_ID, tiny_qwen_repo, ws, "tiny-base")
    _train(ws, root, "chat")
    lora = {"r": 8, "alpha": 16, "dropout": 0.0}
    _train(ws, root, "lora", finetune="lora", lora=lora, max_steps=20, save_interval=20)
    _train(ws, root, "sys", system=SYSTEM, max_steps=2, save_interval=2, block_size=96)
    qwen3 = build_tiny_model(root / "qwen3-repo", "qwen3", seed=1, tied=False, vocab_multiple=100)
    (qwen3 / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    res = run_cli(ws, "models", "import", str(qwen3), "--name", "tiny-qwen3", "--accept-license")
    assert res.exit_code == 0, res.output
    return ws


@pytest.fixture(scope="session")
def chat_hf(gguf_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat checkpoint's Hugging Face export (the reference)."""
    return export(gguf_ws, tmp_path_factory.mktemp("hf") / "chat", "chat")
