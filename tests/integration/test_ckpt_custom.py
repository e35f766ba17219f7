"""``llmforge ckpt`` with the custom Transformer, switching architectures between runs, and
every bad input of the ckpt commands (clear error, nothing changed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import flat, greedy_text, snapshot
from train_helpers import run_cli, small_corpus, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with one finished custom-Transformer run ``tiny`` (trained once)."""
    base = tmp_path_factory.mktemp("custom")
    root = base / "ws"
    root.mkdir()
    data = small_corpus(base / "corpus.txt")
    cfg = write_config(base / "tiny.yaml", data_path=str(data))
    res = run_cli(root, "train", str(cfg))
    assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def home(trained: Path, tmp_path: Path) -> Path:
    """A private copy of that workspace (checkpoints 4 and 8), with the corpus beside it."""
    shutil.copy(trained / "corpus.txt", tmp_path / "corpus.txt")
    shutil.copytree(trained / "ws", tmp_path / "ws")
    return tmp_path / "ws"


def _ckpt(home: Path, run: str, step: int) -> Path:
    return home / "runs" / run / "checkpoints" / f"step-{step:06d}"


def test_register_custom_checkpoint_and_fine_tune_it(home: Path, tmp_path: Path) -> None:
    res = run_cli(home, "ckpt", "register", "tiny/step-8", "--name", "tiny-lm")
    assert res.exit_code == 0, res.output
    entry = json.loads(run_cli(home, "models", "info", "tiny-lm", "--json").stdout)
    assert entry["architecture"] == "custom-transformer" and entry["source"] == "fine-tune"
    assert entry["fine_tuned_from"] is None and entry["model_id"] is None
    assert set(entry["files"]) == {"model.safetensors", "config.json", "char_vocab.json"}
    assert run_cli(home, "models", "validate", "tiny-lm").exit_code == 0
    # usable as model_name: fine-tune the registered from-scratch model
    cfg = write_config(
        tmp_path / "again.yaml", model_name="tiny-lm", data_path=str(tmp_path / "corpus.txt")
    )
    out = run_cli(home, "train", str(cfg), "--max-steps", "4")
    assert out.exit_code == 0, out.output
    assert "Starting new fine-tune of 'tiny-lm'" in out.stdout
    meta = json.loads((_ckpt(home, "again", 4) / "meta.json").read_text())
    assert meta["fine_tuned_from"] == "tiny-lm" and meta["lineage"] == ["tiny-lm"]
    assert meta["tokenizer"]["kind"] == "char"
    # The registered model is the checkpoint's: the same seeded sample, the same greedy text.
    seeded = ("--prompt", "def ", "-n", "12", "--seed", "1")
    gen = run_cli(home, "generate", "tiny-lm", *seeded)
    assert gen.exit_code == 0, gen.output
    assert gen.stdout == run_cli(home, "generate", "tiny/step-8", *seeded).stdout
    greedy = run_cli(home, "generate", "tiny-lm", "--prompt", "def ", "-n", "12", "-t", "0")
    assert greedy.stdout == greedy_text(home, "tiny-lm", "def ", 12)


def test_export_custom_is_self_contained(home: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    res = run_cli(home, "ckpt", "export", "tiny", str(dest))
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["README.md", "char_vocab.json", "config.json", "model.safetensors"]
    src = load_file(_ckpt(home, "tiny", 8) / "model.safetensors")
    out = load_file(dest / "model.safetensors")
    assert all(torch.equal(src[k], out[k]) for k in src)
    assert json.loads((dest / "config.json").read_text())["architecture"] == "custom-transformer"
    assert "from scratch" in (dest / "README.md").read_text()
    # copies, not links: editing the export never touches the checkpoint
    assert not (dest / "model.safetensors").samefile(_ckpt(home, "tiny", 8) / "model.safetensors")


def test_switching_architectures_keeps_runs_separate(
    home: Path, tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    res = run_cli(home, "models", "import", str(tiny_qwen_repo), "--name", "qb", "--accept-license")
    assert res.exit_code == 0, res.output
    custom_before = snapshot(home / "runs" / "tiny")
    qcfg = tmp_path / "qwen.yaml"
    qcfg.write_text(
        yaml.safe_dump(
            {
                "model_name": "qb",
                "data_path": str(tmp_path / "corpus.txt"),
                "block_size": 32,
                "batch_size": 2,
                "max_steps": 2,
                "warmup_steps": 0,
                "learning_rate": 1e-3,
                "min_lr": 1e-4,
                "eval_steps": 1,
                "sample_interval": 0,
            }
        )
    )
    res = run_cli(home, "train", str(qcfg))
    assert res.exit_code == 0, res.output
    assert snapshot(home / "runs" / "tiny") == custom_before
    listed = json.loads(run_cli(home, "ckpt", "list", "--json").stdout)
    assert {(c["run"], c["architecture"]) for c in listed} == {
        ("tiny", "custom-transformer"),
        ("qwen", "qwen2"),
    }
    qmeta = json.loads((_ckpt(home, "qwen", 2) / "meta.json").read_text())
    assert qmeta["config"]["model_name"] == "qb" and qmeta["architecture"] == "qwen2"
    cmeta = json.loads((_ckpt(home, "tiny", 8) / "meta.json").read_text())
    assert cmeta["config"]["model_name"] is None
    for ref in ("tiny", "qwen"):
        assert run_cli(home, "generate", ref, "-n", "3", "--temperature", "0").exit_code == 0


def test_ckpt_info_and_list_for_scratch_run(home: Path) -> None:
    res = run_cli(home, "ckpt", "info", "tiny/step-4")
    assert res.exit_code == 0, res.output
    out = flat(res.stdout)
    assert "trained from scratch" in out and "custom-transformer" in out
    assert "run tiny, step 4 (this checkpoint)" in out and "max_steps" in out
    data = json.loads(run_cli(home, "ckpt", "info", "tiny", "--json").stdout)
    assert data["step"] == 8 and data["meta"]["lineage"] == []
    assert len(json.loads(run_cli(home, "ckpt", "list", "tiny", "--json").stdout)) == 2


def test_ckpt_list_empty_workspace(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    res = run_cli(root, "ckpt", "list")
    assert res.exit_code == 0 and "No checkpoints yet" in res.stdout
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["info", "nope"], "No checkpoint matches 'nope'"),
        (["list", "nope"], "No run named 'nope'"),
        (["register", "nope/step-4", "--name", "x"], "No checkpoint matches"),
        (["register", "tiny", "--name", "Bad/Name"], "not a valid model name"),
        (["register", "tiny/step-4", "--name", "taken"], "already in the registry"),
        (["register", "tiny/step-8", "--name", "new"], "incomplete"),
        (["export", "tiny/step-8", "{tmp}/out"], "incomplete"),
        (["export", "tiny/step-4", "{tmp}/full"], "not empty"),
        (["export", "tiny/4", "{home}/runs/x"], "overlaps"),
    ],
)
def test_bad_ckpt_input_changes_nothing(
    home: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    assert run_cli(home, "ckpt", "register", "tiny/step-4", "--name", "taken").exit_code == 0
    (_ckpt(home, "tiny", 8) / "optimizer.pt").unlink()  # step 8 is now incomplete
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    args = [a.format(tmp=tmp_path, home=home) for a in args]
    before = snapshot(tmp_path)
    res = run_cli(home, "ckpt", *args)
    assert res.exit_code != 0
    assert needle in flat(res.stderr), res.stderr
    assert "Traceback" not in res.output
    assert snapshot(tmp_path) == before
