"""Fine-tune and generate with an imported (tiny, random) Qwen2 through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import greedy_text, snapshot
from hubserver import LocalHub
from llmforge.adapters import get_adapter
from llmforge.inference.generation import SamplingOptions, stream_ids
from llmforge.store.registry import ModelRegistry
from llmforge.workspace import Workspace
from tiny_models import CORPUS
from train_helpers import import_from_local_hub, run_cli

REPO = "Qwen/Qwen2-Tiny"


@pytest.fixture
def home(tmp_path: Path, hub_env: LocalHub, tiny_qwen_repo: Path) -> Path:
    """A workspace with the tiny Qwen2 imported from the local hub as 'tiny-base'."""
    ws = tmp_path / "ws"
    import_from_local_hub(hub_env, REPO, tiny_qwen_repo, ws, "tiny-base")
    return ws


def _config(tmp_path: Path, **extra: object) -> Path:
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(CORPUS), encoding="utf-8")
    cfg = {
        "model_name": "tiny-base",
        "data_path": str(data),
        "block_size": 32,
        "batch_size": 4,
        "max_steps": 30,
        "warmup_steps": 3,
        "learning_rate": 5e-3,
        "min_lr": 5e-4,
        "log_interval": 1,
        "eval_interval": 10,
        "eval_steps": 2,
        "sample_interval": 0,
        "save_interval": 30,
        "weight_decay": 0.0,
        **extra,
    }
    p = tmp_path / "qwen-tiny.yaml"
    p.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.items()))
    return p


def test_fine_tune_lowers_loss_and_records_the_base(home: Path, tmp_path: Path) -> None:
    res = run_cli(home, "train", str(_config(tmp_path)))
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "Starting new fine-tune of 'tiny-base'" in out
    assert "model_id: Qwen/Qwen2-Tiny" in out and "source: huggingface" in out
    assert "architecture qwen2" in out and "parameters" in out
    metrics = [
        json.loads(x) for x in (home / "runs/qwen-tiny/metrics.jsonl").read_text().splitlines()
    ]
    losses = [m["loss"] for m in metrics if m["kind"] == "train"]
    vals = [m["val_loss"] for m in metrics if m["kind"] == "eval"]
    assert losses[-1] < losses[0] - 1.0, losses
    assert vals[-1] < vals[0], vals
    meta = json.loads((home / "runs/qwen-tiny/checkpoints/step-000030/meta.json").read_text())
    assert meta["fine_tuned_from"] == "tiny-base" and meta["model_id"] == REPO
    assert meta["architecture"] == "qwen2" and meta["tokenizer"]["kind"] == "native"
    # The checkpoint is a Hugging Face folder plus llmforge's state.
    ck = home / "runs/qwen-tiny/checkpoints/step-000030"
    assert (ck / "config.json").is_file() and (ck / "model.safetensors").is_file()
    assert (ck / "tokenizer" / "tokenizer.json").is_file()


def test_adapter_logits_equal_plain_transformers(home: Path) -> None:
    from transformers import AutoModelForCausalLM

    ws = Workspace(home.resolve())
    entry = ModelRegistry(ws).get("tiny-base")
    folder = ws.model_path(entry.local_path)
    adapter = get_adapter("qwen2").from_registry(entry, folder)
    plain = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    adapter.model.eval()
    ids = torch.tensor([adapter.tokenizer.encode("The quick brown fox jumps over")])
    with torch.no_grad():
        ours, _ = adapter.forward(ids)
        theirs = plain(input_ids=ids).logits
    assert torch.equal(ours, theirs)


def test_generation_uses_the_kv_cache_and_stops_at_eos(home: Path) -> None:
    ws = Workspace(home.resolve())
    entry = ModelRegistry(ws).get("tiny-base")
    adapter = get_adapter("qwen2").from_registry(entry, ws.model_path(entry.local_path))
    prompt = adapter.tokenizer.encode("The quick brown")
    greedy = list(stream_ids(adapter, prompt, SamplingOptions(max_new_tokens=12, temperature=0)))
    # The cached step-by-step result equals recomputing the full sequence each time.
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(len(greedy)):
            ids.append(int(adapter.forward(torch.tensor([ids]))[0][0, -1].argmax()))
    assert ids[len(prompt) :] == greedy
    # A model whose every logit favours EOS stops at once: nothing is generated.
    eos = adapter.tokenizer.eos_token_id
    assert eos is not None and eos in adapter.stop_token_ids()
    with torch.no_grad():
        adapter.model.lm_head.weight.zero_()
        adapter.model.lm_head.weight[eos] = 1.0
        adapter.model.model.norm.weight.fill_(1.0)
    out = list(stream_ids(adapter, prompt, SamplingOptions(max_new_tokens=50, temperature=0)))
    assert out == []


def test_generate_cli_on_model_name_and_checkpoint(home: Path, tmp_path: Path) -> None:
    res = run_cli(home, "generate", "tiny-base", "--prompt", "The quick", "-n", "8", "-t", "0")
    assert res.exit_code == 0, res.output
    assert res.stdout == greedy_text(home, "tiny-base", "The quick", 8)
    assert (
        run_cli(home, "train", str(_config(tmp_path, max_steps=4, save_interval=4))).exit_code == 0
    )
    sampled = ("generate", "qwen-tiny", "-p", "def add", "-n", "8", "-t", "0.8", "--seed", "2")
    res = run_cli(home, *sampled, "--top-p", "0.9", "--top-k", "20")
    assert res.exit_code == 0, res.output
    assert res.stdout == run_cli(home, *sampled, "--top-p", "0.9", "--top-k", "20").stdout
    # top-k 1 leaves only the most likely token: the greedy text, whatever the temperature.
    res = run_cli(home, *sampled, "--top-k", "1")
    assert res.stdout == greedy_text(home, "qwen-tiny", "def add", 8)


def test_missing_model_files_suggest_validate_and_leave_workspace_alone(
    home: Path, tmp_path: Path
) -> None:
    ws = Workspace(home.resolve())
    entry = ModelRegistry(ws).get("tiny-base")
    (ws.model_path(entry.local_path) / "model.safetensors").unlink()
    cfg = _config(tmp_path)
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code != 0
    assert "llmforge models validate tiny-base" in res.stderr and "re-import" in res.stderr
    assert "Traceback" not in res.output
    assert snapshot(home) == before


def test_unknown_model_name_lists_the_available_ones(home: Path, tmp_path: Path) -> None:
    before = snapshot(home)
    res = run_cli(home, "train", str(_config(tmp_path, model_name="tiny-bse")))
    assert res.exit_code != 0
    assert "No model named 'tiny-bse'" in res.stderr
    assert "Did you mean 'tiny-base'" in res.stderr and "tiny-base" in res.stderr
    assert snapshot(home) == before


def test_architecture_keys_are_ignored_with_a_warning(home: Path, tmp_path: Path) -> None:
    res = run_cli(
        home,
        "train",
        str(_config(tmp_path, n_layers=12, max_steps=2, warmup_steps=0, save_interval=2)),
    )
    assert res.exit_code == 0, res.output
    assert "n_layers is ignored" in res.stderr
    assert "n_layers=2" in res.stdout  # the model's own config
