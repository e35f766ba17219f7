"""LoRA on an imported (tiny) Qwen with DDP on two processes: the same losses as one process
with the same global batch, and an adapter-only checkpoint that resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from safetensors.torch import load_file

from dist_helpers import close, llmforge, losses, ok
from hubserver import LocalHub
from train_helpers import import_from_local_hub, run_cli, small_corpus

LORA = {
    "model_name": "qwen-base",
    "finetune": "lora",
    "precision": "fp32",  # the 1e-5 tolerance is for fp32 sums (auto would pick bf16 here)
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "block_size": 32,
    "batch_size": 2,
    "max_steps": 4,
    "warmup_steps": 1,
    "learning_rate": 1e-2,
    "min_lr": 1e-3,
    "log_interval": 1,
    "eval_interval": 2,
    "eval_steps": 2,
    "sample_interval": 0,
    "save_interval": 2,
}


def test_lora_ddp_matches_one_process_and_resumes_exactly(
    tmp_path: Path, hub: LocalHub, tiny_qwen_repo: Path
) -> None:
    home = tmp_path / "ws"
    import_from_local_hub(hub, "Qwen/Qwen2-Tiny", tiny_qwen_repo, home, "qwen-base")
    data = small_corpus(tmp_path / "corpus.txt", chars=4000)
    cfg = tmp_path / "lora.yaml"
    cfg.write_text(yaml.safe_dump({**LORA, "data_path": str(data)}))
    one = run_cli(home, "train", str(cfg), "--run-name", "one", "--set", "grad_accum_steps=2")
    assert one.exit_code == 0, one.output
    ok(llmforge(home, "train", str(cfg), "--nproc", "2", "--run-name", "ddp"))
    assert close(losses(home, "ddp"), losses(home, "one"))
    last = home / "runs" / "ddp" / "checkpoints" / "step-000004"
    assert (last / "adapter_model.safetensors").is_file()
    assert not (last / "model.safetensors").exists()
    assert json.loads((last / "meta.json").read_text())["base"]["model_name"] == "qwen-base"

    ok(llmforge(home, "train", str(cfg), "--nproc", "2", "--run-name", "ddp-r", "--stop-at", "2"))
    ok(
        llmforge(
            home, "train", str(cfg), "--nproc", "2", "--run-name", "ddp-r", "--resume", "latest"
        )
    )
    assert losses(home, "ddp-r") == losses(home, "ddp")
    resumed = home / "runs" / "ddp-r" / "checkpoints" / "step-000004"
    a = load_file(last / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
