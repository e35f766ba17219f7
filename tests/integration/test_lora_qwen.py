"""LoRA fine-tuning of an imported (tiny) Qwen end to end through the CLI: train, resume
bit-exactly, refuse a changed base, register (adapter entry or merged), export (PEFT folder or
merged Hugging Face folder), generate."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import flat, greedy_text, snapshot
from hubserver import LocalHub
from llmforge.checkpoints.layout import STATE_FILE
from llmforge.store.registry import ModelRegistry
from llmforge.workspace import Workspace
from train_helpers import import_from_local_hub, run_cli, small_corpus

HUB_ID = "Qwen/Qwen2-Tiny"
LORA = {
    "model_name": "qwen-base",
    "finetune": "lora",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
    "block_size": 32,
    "batch_size": 2,
    "grad_accum_steps": 2,
    "max_steps": 6,
    "warmup_steps": 1,
    "learning_rate": 1e-2,
    "min_lr": 1e-3,
    "weight_decay": 0.01,
    "log_interval": 1,
    "eval_interval": 3,
    "eval_steps": 2,
    "sample_interval": 0,
    "save_interval": 3,
    "keep_last": 5,
}
PROJ = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
TEXT = "Fine-tuning adapts a pretrained model."


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, hub: LocalHub, tiny_qwen_repo: Path) -> Path:
    """``qwen-base`` imported from the local hub, a corpus and ``lora.yaml`` (built once)."""
    base = tmp_path_factory.mktemp("qwen-lora")
    import_from_local_hub(hub, HUB_ID, tiny_qwen_repo, base / "ws", "qwen-base")
    data = small_corpus(base / "corpus.txt", chars=4000)
    (base / "lora.yaml").write_text(yaml.safe_dump({**LORA, "data_path": str(data)}))
    return base


@pytest.fixture(scope="module")
def trained(imported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That workspace after the LoRA run ``lora`` (6 steps, checkpoints 3 and 6)."""
    base = tmp_path_factory.mktemp("qwen-lora-trained")
    shutil.copy(imported / "lora.yaml", base / "lora.yaml")
    shutil.copytree(imported / "ws", base / "ws")
    out = train(base / "ws")
    (base / "train-output.txt").write_text(out)
    return base


@pytest.fixture
def done(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the workspace with the finished LoRA run."""
    shutil.copy(trained / "lora.yaml", tmp_path / "lora.yaml")
    shutil.copytree(trained / "ws", tmp_path / "ws")
    return tmp_path / "ws"


def manifest_sha256(folder: Path) -> str:
    """The documented base identity, computed from the model's files on disk: sha256 of the
    JSON list ``[[file, size, sha256], ...]`` sorted by file, compact separators, UTF-8."""
    rows = sorted(
        [
            p.relative_to(folder).as_posix(),
            p.stat().st_size,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        ]
        for p in folder.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode("utf-8")).hexdigest()


def train(home: Path, *args: str) -> str:
    res = run_cli(home, "train", str(home.parent / "lora.yaml"), *args)
    assert res.exit_code == 0, res.output
    return res.stdout


def ckpt(home: Path, run: str, step: int) -> Path:
    return home / "runs" / run / "checkpoints" / f"step-{step:06d}"


def meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def logits_of(home: Path, source: str) -> torch.Tensor:
    from llmforge.inference.model_source import load_for_inference

    adapter, _ = load_for_inference(Workspace(home.resolve()), source)
    adapter.model.eval()
    with torch.no_grad():
        return adapter.forward(torch.tensor([adapter.tokenizer.encode(TEXT)]))[0]


def wide(home: Path, *args: str) -> str:
    """Flattened stdout of ``llmforge --home HOME ARGS`` on a 200-column terminal."""
    from typer.testing import CliRunner

    from llmforge.cli import app

    res = CliRunner().invoke(app, ["--home", str(home), *args], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return flat(res.stdout)


def refused(home: Path, *args: str, needle: str) -> str:
    before = snapshot(home)
    res = run_cli(home, *args)
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and needle in flat(res.stderr), res.stderr
    assert snapshot(home) == before
    return flat(res.stderr)


def test_lora_run_trains_and_saves_only_the_adapter(trained: Path) -> None:
    home = trained / "ws"
    out = flat((trained / "train-output.txt").read_text())
    assert "Starting new fine-tune of 'qwen-base'" in out
    assert "LoRA: r=4, alpha=8, dropout=0.1 on " + ", ".join(PROJ) in out
    assert "trainable" in out and "stays frozen" in out
    path = ckpt(home, "lora", 6)
    names = {p.name for p in path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= names
    assert "model.safetensors" not in names and "config.json" not in names
    m = meta(path)
    base_hash = manifest_sha256(home / "models" / "qwen-base")
    assert m["finetune"] == "lora" and m["fine_tuned_from"] == "qwen-base"
    assert m["lineage"] == ["qwen-base", f"hf:{HUB_ID}"]
    assert m["base"] == {
        "model_name": "qwen-base",
        "model_id": HUB_ID,
        "architecture": "qwen2",
        "manifest_sha256": base_hash,
    }
    assert m["lora"]["target_modules"] == PROJ and m["lora"]["r"] == 4
    # Only the adapter's matrices are trained: they are all the optimizer holds.
    weights = load_file(str(path / "adapter_model.safetensors"))
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    assert sum(t.numel() for t in weights.values()) == m["lora"]["parameters"]
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    assert len(opt["state"]) == len(weights)
    assert sum(len(g["params"]) for g in opt["param_groups"]) == len(weights)
    assert m["lora"]["parameters"] < m["model"]["parameters"] / 5
    losses = [x for _, x in json.loads((path / STATE_FILE).read_text())["losses"]]
    assert losses[-1] < losses[0]
    gen = run_cli(home, "generate", "lora", "-p", "The quick", "-n", "5", "--temperature", "0")
    assert gen.exit_code == 0, gen.output
    assert gen.stdout == greedy_text(home, "lora", "The quick", 5)
    info = wide(home, "ckpt", "info", "lora")
    assert "finetune lora" in info and "qwen-base (Qwen/Qwen2-Tiny)" in info
    assert "r=4, alpha=8" in info and "q_proj" in info and base_hash in info
    assert "qwen-base + LoRA" in wide(home, "ckpt", "list")


def test_resume_is_bit_exact_with_accumulation_and_dropout(done: Path) -> None:
    home = done  # its run "lora" went straight through the same 6 steps
    train(home, "--run-name", "split", "--stop-at", "3")
    out = flat(train(home, "--run-name", "split", "--resume", "latest"))
    assert "Continuing fine-tune run 'split' from step 3" in out and "LoRA: r=4" in out
    a, b = ckpt(home, "lora", 6), ckpt(home, "split", 6)
    assert (
        json.loads((a / STATE_FILE).read_text())["losses"]
        == json.loads((b / STATE_FILE).read_text())["losses"]
    )
    wa, wb = (
        load_file(str(a / "adapter_model.safetensors")),
        load_file(str(b / "adapter_model.safetensors")),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(a / "optimizer.pt", weights_only=True)["state"]
    ob = torch.load(b / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)
    for key in ("base", "lora", "lineage", "fine_tune_started_at"):
        assert meta(b)[key] == meta(ckpt(home, "split", 3))[key], key


def _change_base_manifest(home: Path) -> None:
    """What a re-import of another model under the same name does to the registry entry."""
    reg = home / "models" / "registry.json"
    data = json.loads(reg.read_text())
    files = data["models"]["qwen-base"]["files"]
    files["config.json"]["sha256"] = "0" * 64
    reg.write_text(json.dumps(data))


def test_a_changed_base_is_refused_unless_allowed(done: Path) -> None:
    home = done
    assert run_cli(home, "ckpt", "register", "lora", "--name", "my-adapter").exit_code == 0
    _change_base_manifest(home)
    for args in (
        ("generate", "lora", "-p", "x", "-n", "2"),
        ("generate", "my-adapter", "-p", "x", "-n", "2"),
        ("train", str(home.parent / "lora.yaml"), "--resume", "latest", "--max-steps", "8"),
        ("ckpt", "register", "lora", "--name", "merged", "--merge"),
        ("ckpt", "export", "lora", str(home.parent / "out"), "--merge"),
    ):
        msg = refused(home, *args, needle="--allow-base-mismatch")
        assert "manifest sha256" in msg and "'qwen-base'" in msg
    res = run_cli(home, "generate", "lora", "-p", "x", "-n", "2", "--allow-base-mismatch")
    assert res.exit_code == 0, res.output
    assert "Using it anyway" in flat(res.stderr)


def test_a_missing_base_is_named(done: Path) -> None:
    home = done
    refused(home, "models", "delete", "qwen-base", "--yes", needle="runs/lora/checkpoints")
    assert run_cli(home, "models", "delete", "qwen-base", "--force").exit_code == 0
    refused(home, "generate", "lora", "-p", "x", needle="not in the registry")


def test_register_adapter_entry_references_its_base(done: Path) -> None:
    home = done
    res = run_cli(home, "ckpt", "register", "lora", "--name", "my-adapter")
    assert res.exit_code == 0, res.output
    assert "LoRA adapter" in flat(res.stdout) and "'qwen-base'" in flat(res.stdout)
    entry = json.loads(run_cli(home, "models", "info", "my-adapter", "--json").stdout)
    assert entry["fine_tuned_from"] == "qwen-base" and entry["source"] == "fine-tune"
    assert entry["architecture"] == "qwen2" and entry["lineage"] == ["qwen-base"]
    d = entry["details"]
    assert d["adapter"] == "lora" and d["base"] == "qwen-base" and d["r"] == 4
    assert d["target_modules"] == PROJ
    assert d["base_manifest_sha256"] == manifest_sha256(home / "models" / "qwen-base")
    assert "adapter_model.safetensors" in entry["files"]
    assert "model.safetensors" not in entry["files"]
    info = wide(home, "models", "info", "my-adapter")
    assert "adapter lora" in info and "base qwen-base" in info
    assert "LoRA adapter r=4, alpha=8.0, targets down_proj" in info
    assert "loads onto base 'qwen-base'" in info
    assert torch.equal(logits_of(home, "my-adapter"), logits_of(home, "lora"))
    seeded = ("-p", "The", "-n", "8", "--seed", "1")
    gen = run_cli(home, "generate", "my-adapter", *seeded)
    assert gen.exit_code == 0 and gen.stdout == run_cli(home, "generate", "lora", *seeded).stdout
    # An adapter is not a full model: fine-tuning it directly is refused, with the way out.
    cfg = home.parent / "on-adapter.yaml"
    cfg.write_text(yaml.safe_dump({**LORA, "model_name": "my-adapter", "finetune": "full"}))
    refused(home, "train", str(cfg), needle="--merge")


def test_register_merge_gives_a_full_model(done: Path) -> None:
    home = done
    res = run_cli(home, "ckpt", "register", "lora", "--name", "merged", "--merge")
    assert res.exit_code == 0, res.output
    entry = json.loads(run_cli(home, "models", "info", "merged", "--json").stdout)
    assert entry["fine_tuned_from"] == "qwen-base" and "adapter" not in entry["details"]
    assert entry["details"]["merged_lora"]["base"] == "qwen-base"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(entry["files"])
    assert run_cli(home, "models", "validate", "merged").exit_code == 0
    assert torch.allclose(logits_of(home, "merged"), logits_of(home, "lora"), atol=1e-5, rtol=0)
    refused(home, "ckpt", "register", "lora", "--name", "merged", needle="already")


def test_export_adapter_and_merged_load_with_plain_peft_and_transformers(
    done: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    home = done
    ours = logits_of(home, "lora")
    ws = Workspace(home.resolve())
    base_dir = ws.model_path(ModelRegistry(ws).get("qwen-base").local_path)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    x = torch.tensor([tok.encode(TEXT, add_special_tokens=False)])

    adapter_dir = tmp_path / "adapter"
    res = run_cli(home, "ckpt", "export", "lora", str(adapter_dir))
    assert res.exit_code == 0, res.output
    assert "peft.PeftModel.from_pretrained" in flat(res.stdout)
    names = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= names
    assert "model.safetensors" not in names
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID and config["r"] == 4
    assert "library_name: peft" in (adapter_dir / "README.md").read_text()
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base_dir)), str(adapter_dir)
    ).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=x).logits
    assert torch.equal(ours, theirs)

    merged_dir = tmp_path / "merged"
    res = run_cli(home, "ckpt", "export", "lora", str(merged_dir), "--merge")
    assert res.exit_code == 0, res.output
    names = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert "adapter_config.json" not in names
    plain = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    with torch.no_grad():
        theirs = plain(input_ids=x).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_merge_of_a_full_checkpoint_is_refused(done: Path, tmp_path: Path) -> None:
    home = done
    train(home, "--run-name", "full", "--set", "finetune=full", "--max-steps", "2")
    refused(home, "ckpt", "register", "full", "--name", "x", "--merge", needle="full weights")
    refused(home, "ckpt", "export", "full", str(tmp_path / "o"), "--merge", needle="full weights")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["--set", "lora.target_modules=[nope]"], "match no layer"),
        (["--set", "model_name=null"], "needs a registry model"),
        (["--set", "lora.r=0"], "lora.r"),
        (["--init-from", "lora", "--name", "branch"], "--init-from does not work with LoRA"),
    ],
)
def test_bad_lora_input_changes_nothing(done: Path, overrides: list[str], needle: str) -> None:
    refused(
        done,
        "train",
        str(done.parent / "lora.yaml"),
        "--run-name",
        "bad",
        *overrides,
        needle=needle,
    )


def test_chat_lora_keeps_its_stop_tokens_through_load_and_merge(imported: Path, tmp_path: Path):
    from llmforge.inference.model_source import load_for_inference

    shutil.copytree(imported / "ws", tmp_path / "ws")
    home = tmp_path / "ws"
    rows = [
        {"messages": [{"role": "user", "content": f"{i}"}, {"role": "assistant", "content": "ok"}]}
        for i in range(40)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tmp_path / "chat-lora.yaml"
    cfg.write_text(yaml.safe_dump({**LORA, "data_path": str(data), "max_steps": 2}))
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    ws = Workspace(home.resolve())
    adapter, _ = load_for_inference(ws, "chat-lora")
    end = adapter.tokenizer.encode("<|im_end|>")
    assert len(end) == 1 and end[0] in adapter.stop_token_ids()
    assert run_cli(home, "ckpt", "register", "chat-lora", "--name", "m", "--merge").exit_code == 0
    merged, _ = load_for_inference(ws, "m")
    assert end[0] in merged.stop_token_ids()
