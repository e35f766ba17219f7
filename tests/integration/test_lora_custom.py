"""LoRA on a registered custom Transformer, and the ``lora:`` config section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import greedy_text
from llmforge.config import TrainingConfig, load_config, parse_overrides
from llmforge.errors import ConfigError
from train_helpers import run_cli, small_corpus, write_config


def test_lora_defaults_and_nested_overrides(tmp_path: Path) -> None:
    cfg = TrainingConfig(model_name="m", finetune="lora")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (8, 16.0, None)
    assert TrainingConfig(model_name="m").finetune == "full"
    p = tmp_path / "c.yaml"
    p.write_text("model_name: m\nfinetune: lora\nlora:\n  r: 4\n  dropout: 0.0\n")
    cfg = load_config(p, parse_overrides(["lora.alpha=32", "lora.target_modules=[q_proj]"]))
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (4, 32.0, 0.0)
    assert cfg.lora.target_modules == ["q_proj"]
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"finetune": "lora"}, "needs a registry model"),
        ({"model_name": "m", "finetune": "qlora"}, "finetune"),
        ({"model_name": "m", "lora": {"rank": 4}}, "lora.rank"),
        ({"model_name": "m", "lora": {"target_modules": []}}, "target_modules"),
        ({"model_name": "m", "lora": {"dropout": 1.0}}, "lora.dropout"),
    ],
)
def test_bad_lora_config_names_the_key(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainingConfig.from_dict(data, source="x.yaml")
    assert needle in e.value.message


def test_lora_on_a_registered_custom_transformer(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    data = small_corpus(tmp_path / "corpus.txt", chars=8000)
    scratch = write_config(tmp_path / "scratch.yaml", data_path=str(data), max_steps=4)
    assert run_cli(home, "train", str(scratch)).exit_code == 0
    assert run_cli(home, "ckpt", "register", "scratch", "--name", "cbase").exit_code == 0
    lora = tmp_path / "clora.yaml"
    lora.write_text(
        json.dumps(
            {
                "model_name": "cbase",
                "finetune": "lora",
                "data_path": str(data),
                "block_size": 32,
                "batch_size": 4,
                "grad_accum_steps": 2,
                "max_steps": 4,
                "warmup_steps": 1,
                "eval_interval": 2,
                "eval_steps": 1,
                "sample_interval": 0,
                "save_interval": 2,
                "lora": {"dropout": 0.2},
            }
        )
    )
    res = run_cli(home, "train", str(lora))
    assert res.exit_code == 0, res.output
    assert "LoRA: r=8, alpha=16, dropout=0.2 on fc, proj, qkv" in " ".join(res.stdout.split())
    assert run_cli(home, "train", str(lora), "--run-name", "s", "--stop-at", "2").exit_code == 0
    assert run_cli(home, "train", str(lora), "--run-name", "s", "--resume", "latest").exit_code == 0
    states = [
        json.loads((home / f"runs/{r}/checkpoints/step-000004/trainer_state.json").read_text())
        for r in ("clora", "s")
    ]
    assert states[0]["losses"] == states[1]["losses"]
    files = {p.name for p in (home / "runs/clora/checkpoints/step-000004").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    for args in (("--name", "cad"), ("--name", "cmerged", "--merge")):
        assert run_cli(home, "ckpt", "register", "clora", *args).exit_code == 0
    outs = {
        src: run_cli(home, "generate", src, "-p", "def ", "-n", "12", "--temperature", "0").stdout
        for src in ("clora", "cad", "cmerged")
    }
    for src, out in outs.items():
        assert out == greedy_text(home, src, "def ", 12), src
    assert outs["clora"] == outs["cad"]
    # Merged: the same model up to rounding.
    assert torch.allclose(_logits(home, "cmerged"), _logits(home, "clora"), atol=1e-5, rtol=0)


def _logits(home: Path, source: str) -> torch.Tensor:
    from llmforge.inference.model_source import load_for_inference
    from llmforge.workspace import Workspace

    adapter, _ = load_for_inference(Workspace(home.resolve()), source)
    adapter.model.eval()
    with torch.no_grad():
        return adapter.forward(torch.tensor([adapter.tokenizer.encode("def add(a, b):")]))[0]
