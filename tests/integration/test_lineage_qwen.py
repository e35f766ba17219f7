"""Qwen fine-tuning lineage end to end: import from the (local) hub, fine-tune, resume,
register, fine-tune the registered model, branch, export, tokenizer override."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from helpers import flat, greedy_text, snapshot
from hubserver import LocalHub
from llmforge.checkpoints.layout import STATE_FILE
from tiny_models import build_tokenizer
from train_helpers import import_from_local_hub, run_cli, small_corpus

HUB_ID = "Qwen/Qwen2-Tiny"
ORIGIN = f"hf:{HUB_ID}"
FT = {
    "model_name": "qwen-base",
    "block_size": 32,
    "batch_size": 2,
    "max_steps": 6,
    "warmup_steps": 1,
    "learning_rate": 3e-3,
    "min_lr": 3e-4,
    "weight_decay": 0.0,
    "dropout": 0.0,
    "log_interval": 1,
    "eval_interval": 3,
    "eval_steps": 2,
    "sample_interval": 0,
    "save_interval": 2,
    "keep_last": 5,
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, hub: LocalHub, tiny_qwen_repo: Path) -> Path:
    """``qwen-base`` imported from the local hub, a corpus and ``ft.yaml`` (built once)."""
    base = tmp_path_factory.mktemp("qwen-lineage")
    import_from_local_hub(hub, HUB_ID, tiny_qwen_repo, base / "ws", "qwen-base")
    data = small_corpus(base / "corpus.txt", chars=4000)
    (base / "ft.yaml").write_text(yaml.safe_dump({**FT, "data_path": str(data)}))
    return base


@pytest.fixture(scope="module")
def trained(imported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That workspace after the run ``ft`` (6 steps, checkpoints 2, 4, 6), trained once."""
    base = tmp_path_factory.mktemp("qwen-trained")
    shutil.copy(imported / "ft.yaml", base / "ft.yaml")
    shutil.copytree(imported / "ws", base / "ws")
    train(base / "ws")
    return base


def _copy(template: Path, tmp_path: Path) -> Path:
    shutil.copy(template / "ft.yaml", tmp_path / "ft.yaml")
    shutil.copytree(template / "ws", tmp_path / "ws")
    return tmp_path / "ws"


@pytest.fixture
def ws(imported: Path, tmp_path: Path) -> Path:
    """A private copy of the imported workspace (no runs yet)."""
    return _copy(imported, tmp_path)


@pytest.fixture
def done(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the workspace with the finished run ``ft``."""
    return _copy(trained, tmp_path)


def wide(home: Path, *args: str) -> str:
    """stdout of ``llmforge --home HOME ARGS`` on a 200-column terminal (no folded cells)."""
    from typer.testing import CliRunner

    from llmforge.cli import app

    res = CliRunner().invoke(app, ["--home", str(home), *args], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.stdout


def cfg(home: Path) -> str:
    return str(home.parent / "ft.yaml")


def ckpt(home: Path, run: str, step: int) -> Path:
    return home / "runs" / run / "checkpoints" / f"step-{step:06d}"


def meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def train(home: Path, *args: str) -> str:
    res = run_cli(home, "train", cfg(home), *args)
    assert res.exit_code == 0, res.output
    return res.stdout


def test_fine_tune_records_lineage_and_loss_falls(ws: Path) -> None:
    out = train(ws)
    assert "Starting new fine-tune of 'qwen-base'" in out
    assert f"Lineage: run ft <- qwen-base <- {ORIGIN}" in out
    for step in (2, 4, 6):
        m = meta(ckpt(ws, "ft", step))
        assert m["model_name"] == "qwen-base" and m["fine_tuned_from"] == "qwen-base"
        assert m["model_id"] == HUB_ID and m["model_source"] == "huggingface"
        assert m["architecture"] == "qwen2" and m["lineage"] == ["qwen-base", ORIGIN]
        assert m["tokenizer"] == {"kind": "native", "identifier": HUB_ID}
        assert m["license"] == "apache-2.0" and m["config"]["model_name"] == "qwen-base"
    starts = {meta(ckpt(ws, "ft", s))["fine_tune_started_at"] for s in (2, 4, 6)}
    assert len(starts) == 1
    assert (ckpt(ws, "ft", 6) / "tokenizer" / "tokenizer.json").is_file()
    losses = [
        loss for _, loss in json.loads((ckpt(ws, "ft", 6) / STATE_FILE).read_text())["losses"]
    ]
    assert losses[-1] < losses[0]
    gen = run_cli(ws, "generate", "ft", "--prompt", "The quick", "-n", "5", "--temperature", "0")
    assert gen.exit_code == 0 and gen.stdout == greedy_text(ws, "ft", "The quick", 5)


def test_resume_continues_identically_and_keeps_lineage(done: Path) -> None:
    ws = done  # its run "ft" went straight through the same 6 steps
    train(ws, "--run-name", "split", "--stop-at", "2")
    first = meta(ckpt(ws, "split", 2))
    out = train(ws, "--run-name", "split", "--resume", "latest")
    assert "Continuing fine-tune run 'split' from step 2" in out
    assert f"run split <- qwen-base <- {ORIGIN}" in out
    last = meta(ckpt(ws, "split", 6))
    for key in ("lineage", "fine_tuned_from", "fine_tune_started_at", "model_id", "tokenizer"):
        assert last[key] == first[key], key
    a = json.loads((ckpt(ws, "ft", 6) / STATE_FILE).read_text())["losses"]
    b = json.loads((ckpt(ws, "split", 6) / STATE_FILE).read_text())["losses"]
    assert a == b


def test_register_then_fine_tune_again_shows_a_three_deep_chain(done: Path) -> None:
    ws = done
    res = run_cli(ws, "ckpt", "register", "ft/step-2", "--name", "qwen-ft1")
    assert res.exit_code == 0, res.output
    assert "fine-tuned from qwen-base" in flat(res.stdout)
    entry = json.loads(run_cli(ws, "models", "info", "qwen-ft1", "--json").stdout)
    assert entry["source"] == "fine-tune" and entry["fine_tuned_from"] == "qwen-base"
    assert entry["model_id"] == HUB_ID and entry["license"] == "apache-2.0"
    assert entry["origin"] == ORIGIN and entry["details"]["step"] == 2
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(entry["files"])
    # weights are hard links to the checkpoint's, not copies
    reg = ws / "models" / "qwen-ft1" / "model.safetensors"
    assert reg.samefile(ckpt(ws, "ft", 2) / "model.safetensors")

    out = train(ws, "--set", "model_name=qwen-ft1", "--run-name", "ft2", "--max-steps", "2")
    assert f"run ft2 <- qwen-ft1 <- qwen-base <- {ORIGIN}" in out
    m = meta(ckpt(ws, "ft2", 2))
    assert m["fine_tuned_from"] == "qwen-ft1" and m["lineage"] == ["qwen-ft1", "qwen-base", ORIGIN]
    assert run_cli(ws, "ckpt", "register", "ft2", "--name", "qwen-ft2").exit_code == 0

    info = wide(ws, "models", "info", "qwen-ft2")
    tree = info[info.index("Lineage") :]
    order = [tree.index(x) for x in (HUB_ID, "qwen-base", "qwen-ft1", "qwen-ft2")]
    assert order == sorted(order)
    assert "qwen-ft2 (child)" in run_cli(ws, "models", "info", "qwen-ft1").stdout
    ci = wide(ws, "ckpt", "info", "ft2/step-2")
    tree = ci[ci.index("Lineage") :]
    order = [tree.index(x) for x in (HUB_ID, "qwen-base", "qwen-ft1", "run ft2, step 2")]
    assert order == sorted(order) and "qwen-ft2 (registered)" in tree
    rows = wide(ws, "ckpt", "list")
    assert "4 checkpoint(s)" in rows
    for col in ("run", "step", "train loss", "val loss", "model", "fine_tuned_from", "size"):
        assert col in rows
    listed = json.loads(run_cli(ws, "ckpt", "list", "ft2", "--json").stdout)
    assert [(c["run"], c["step"], c["fine_tuned_from"]) for c in listed] == [("ft2", 2, "qwen-ft1")]


def test_branch_from_checkpoint_leaves_the_original_untouched(done: Path) -> None:
    ws = done
    source = ckpt(ws, "ft", 2)
    before_ckpt = snapshot(source)
    before_model = snapshot(ws / "models" / "qwen-base")
    out = train(ws, "--init-from", "ft/step-2", "--name", "qwen-branch", "--max-steps", "2")
    assert "Starting new fine-tune branch 'qwen-branch' from checkpoint" in out
    assert f"run qwen-branch <- qwen-branch <- qwen-base <- {ORIGIN}" in out
    m = meta(ckpt(ws, "qwen-branch", 2))
    assert m["fine_tuned_from"] == "qwen-branch" and m["model_source"] == "fine-tune"
    assert m["lineage"] == ["qwen-branch", "qwen-base", ORIGIN]
    assert m["branched_from"]["run"] == "ft" and m["branched_from"]["step"] == 2
    entry = json.loads(run_cli(ws, "models", "info", "qwen-branch", "--json").stdout)
    assert entry["fine_tuned_from"] == "qwen-base" and entry["source"] == "fine-tune"
    assert entry["lineage"] == ["qwen-base"] and entry["origin"] == ORIGIN
    assert snapshot(source) == before_ckpt
    assert snapshot(ws / "models" / "qwen-base") == before_model
    # the branch started from the checkpoint's weights, with step 0 and a fresh optimizer
    state = json.loads((ckpt(ws, "qwen-branch", 2) / STATE_FILE).read_text())
    assert [s for s, _ in state["losses"]] == [1, 2]
    # resuming the branch keeps its lineage
    train(ws, "--run-name", "qwen-branch", "--resume", "latest", "--max-steps", "4")
    assert meta(ckpt(ws, "qwen-branch", 4))["lineage"] == m["lineage"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--init-from", "ft/step-2", "--name", "qwen-base"], "already in the registry"),
        (["--init-from", "ft/step-2", "--name", "Bad Name"], "not a valid model name"),
        (["--init-from", "nope/step-2", "--name", "x"], "No checkpoint matches"),
        (["--init-from", "ft/step-2"], "--init-from and --name go together"),
        (["--init-from", "ft", "--name", "x", "--resume", "latest"], "--resume"),
    ],
)
def test_bad_branch_input_changes_nothing(done: Path, args: list[str], needle: str) -> None:
    ws = done
    before = snapshot(ws)
    res = run_cli(ws, "train", cfg(ws), *args)
    assert res.exit_code != 0
    assert needle in flat(res.stderr) and "Traceback" not in res.output
    assert snapshot(ws) == before


def test_export_round_trip_has_identical_logits(done: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmforge.inference.model_source import load_for_inference
    from llmforge.workspace import Workspace

    ws = done
    dest = tmp_path / "export"
    res = run_cli(ws, "ckpt", "export", "ft/step-2", str(dest))
    assert res.exit_code == 0, res.output
    names = {p.name for p in dest.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md"} <= names
    assert "tokenizer.json" in names
    card = (dest / "README.md").read_text()
    assert f"base_model: {HUB_ID}" in card and "license: apache-2.0" in card
    assert "qwen-base" in card
    gen = json.loads((dest / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 0

    adapter, _ = load_for_inference(Workspace(root=ws), "ft/step-2")
    # fp32 compute on both sides (the weights are bf16 when precision: auto chose bf16)
    plain = AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(dest))
    text = "Fine-tuning adapts a pretrained model."
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == adapter.tokenizer.encode(text) and tok.decode(ids) == text
    x = torch.tensor([ids])
    adapter.model.eval()
    plain.eval()
    with torch.no_grad():
        ours, _ = adapter.forward(x)
        theirs = plain(input_ids=x).logits
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)

    before = snapshot(tmp_path)
    again = run_cli(ws, "ckpt", "export", "ft", str(dest))
    assert again.exit_code != 0 and "not empty" in again.stderr and "--force" in again.stderr
    assert snapshot(tmp_path) == before
    forced = run_cli(ws, "ckpt", "export", "ft", str(dest), "--force")
    assert forced.exit_code == 0, forced.output


def test_tokenizer_override_is_recorded_and_resizes_the_embedding(ws: Path, tmp_path: Path) -> None:
    tok_dir = tmp_path / "big-tok"
    vocab = build_tokenizer(tok_dir, vocab_size=448)
    res = run_cli(
        ws, "train", cfg(ws), "--set", f"tokenizer_override={tok_dir}", "--max-steps", "2"
    )
    assert res.exit_code == 0, res.output
    err = flat(res.stderr)
    assert "tokenizer_override" in err and "resized" in err and str(vocab) in err
    m = meta(ckpt(ws, "ft", 2))
    assert m["tokenizer"] == {"kind": "override", "identifier": str(tok_dir)}
    assert m["model"]["vocab_size"] == vocab
    gen = run_cli(ws, "generate", "ft", "--prompt", "The", "-n", "3", "--temperature", "0")
    assert gen.exit_code == 0, gen.output
    # registered, the fine-tune keeps decoding with the override
    assert run_cli(ws, "ckpt", "register", "ft", "--name", "ovr").exit_code == 0
    from llmforge.inference.model_source import load_for_inference
    from llmforge.workspace import Workspace

    adapter, _ = load_for_inference(Workspace(root=ws), "ovr")
    assert adapter.tokenizer.kind == "override" and adapter.tokenizer.vocab_size == vocab

    before = snapshot(ws)
    bad = run_cli(ws, "train", cfg(ws), "--set", "tokenizer_override=nope", "--run-name", "other")
    assert bad.exit_code != 0 and "tokenizer_override 'nope'" in flat(bad.stderr)
    assert "qwen-base" in bad.stderr and "Traceback" not in bad.output
    assert snapshot(ws) == before
