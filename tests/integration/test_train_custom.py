"""End to end: train the custom Transformer through the CLI, resume exactly, generate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import greedy_text, snapshot
from llmforge.checkpoints.layout import OPTIMIZER_FILE, STATE_FILE
from train_helpers import run_cli, small_corpus, write_config


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "ws"
    home.mkdir()
    data = small_corpus(tmp_path / "corpus.txt")
    cfg = write_config(tmp_path / "tiny.yaml", data_path=str(data), grad_accum_steps=2)
    return home, cfg


def _ckpt(home: Path, run: str, step: int) -> Path:
    return home / "runs" / run / "checkpoints" / f"step-{step:06d}"


def test_train_writes_run_folder_and_complete_checkpoints(setup: tuple[Path, Path]) -> None:
    home, cfg = setup
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "trained from scratch" in out
    assert "custom-transformer" in out and "n_layers=1" in out and "parameters" in out
    run = home / "runs" / "tiny"
    assert (run / "config.yaml").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000008"]
    c = run / "checkpoints" / "step-000008"
    for f in (
        "model.safetensors",
        "config.json",
        "optimizer.pt",
        STATE_FILE,
        "meta.json",
        "tokenizer/char_vocab.json",
    ):
        assert (c / f).is_file(), f
    meta = json.loads((c / "meta.json").read_text())
    assert meta["architecture"] == "custom-transformer"
    assert meta["model_name"] is None and meta["fine_tuned_from"] is None
    assert meta["tokenizer"]["kind"] == "char"
    assert meta["config"]["model_name"] is None and meta["config"]["max_steps"] == 8
    state = json.loads((c / STATE_FILE).read_text())
    assert state["step"] == 8 and len(state["losses"]) == 8
    assert state["sampler"]["position"] == 8
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 9))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "elapsed"} <= train[0].keys()
    assert any(m["kind"] == "eval" and "val_ppl" in m for m in metrics)


def test_keep_last_prunes_older_checkpoints_also_across_a_resume(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    data = str(small_corpus(tmp_path / "c.txt"))
    cfg = write_config(
        tmp_path / "k.yaml", data_path=data, max_steps=6, save_interval=1, keep_last=2
    )
    ckdir = home / "runs" / "k" / "checkpoints"
    assert run_cli(home, "train", str(cfg), "--stop-at", "4").exit_code == 0
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-000003", "step-000004"]
    assert run_cli(home, "train", str(cfg), "--resume", "latest").exit_code == 0
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-000005", "step-000006"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_bit_exact_with_grad_accumulation(
    setup: tuple[Path, Path], precision: str
) -> None:
    home, cfg = setup
    prec = ("--set", f"precision={precision}")
    assert run_cli(home, "train", str(cfg), "--run-name", "straight", *prec).exit_code == 0
    first = run_cli(home, "train", str(cfg), "--run-name", "split", "--stop-at", "4", *prec)
    assert first.exit_code == 0, first.output
    assert "Resume with" in first.stdout
    assert not _ckpt(home, "split", 8).exists()
    second = run_cli(home, "train", str(cfg), "--run-name", "split", "--resume", "latest")
    assert second.exit_code == 0, second.output
    assert "Continuing run 'split' from step 4" in second.stdout

    a, b = _ckpt(home, "straight", 8), _ckpt(home, "split", 8)
    la = json.loads((a / STATE_FILE).read_text())["losses"]
    lb = json.loads((b / STATE_FILE).read_text())["losses"]
    assert la == lb  # identical floats, every step
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert {w.dtype for w in wa.values()} == {dtype}
    oa = torch.load(a / OPTIMIZER_FILE, weights_only=True)
    ob = torch.load(b / OPTIMIZER_FILE, weights_only=True)
    sa, sb = oa["state"], ob["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    if precision == "bf16":  # the fp32 master weights continue exactly across the resume
        ma, mb = oa["master_weights"], ob["master_weights"]
        assert {m.dtype for m in ma.values()} == {torch.float32} and len(ma) == len(sa)
        assert all(torch.equal(ma[i], mb[i]) for i in ma)
    # The metrics file of the resumed run has each step once.
    steps = [
        json.loads(x)["step"]
        for x in (home / "runs/split/metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert steps == list(range(1, 9))


def test_model_learns_validation_loss_falls(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    data = small_corpus(tmp_path / "c.txt", chars=60_000)
    cfg = write_config(
        tmp_path / "learn.yaml",
        data_path=str(data),
        max_steps=60,
        eval_interval=10,
        save_interval=60,
        dropout=0.0,
        d_model=64,
        batch_size=8,
        sample_interval=0,
    )
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    evals = [json.loads(x) for x in (home / "runs/learn/metrics.jsonl").read_text().splitlines()]
    vals = [m["val_loss"] for m in evals if m["kind"] == "eval"]
    train = [m["loss"] for m in evals if m["kind"] == "train"]
    assert vals == sorted(vals, reverse=True), vals  # falls at every evaluation
    assert vals[-1] < vals[0] - 0.3, vals
    assert train[-1] < train[0] - 1.0, train


def test_existing_run_is_not_overwritten(setup: tuple[Path, Path]) -> None:
    home, cfg = setup
    assert run_cli(home, "train", str(cfg), "--max-steps", "4").exit_code == 0
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg), "--max-steps", "4")
    assert res.exit_code != 0
    assert "already has checkpoints" in res.stderr and "--resume latest" in res.stderr
    assert snapshot(home) == before


def test_resume_without_checkpoint_and_unknown_reference(setup: tuple[Path, Path]) -> None:
    home, cfg = setup
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg), "--resume", "latest")
    assert res.exit_code != 0 and "has no checkpoint" in res.stderr
    res = run_cli(home, "train", str(cfg), "--resume", "nope/step-3")
    assert res.exit_code != 0 and "No checkpoint matches" in res.stderr
    assert "Traceback" not in res.output
    assert snapshot(home) == before


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("max_steps: [\n", "not valid YAML"),
        ("nonsense_key: 1\n", "unknown key 'nonsense_key'"),
        ("max_steps: many\n", "key 'max_steps'"),
        ("learning_rate: 0.001\nmin_lr: 0.01\n", "min_lr"),
        ("data_path: /definitely/missing.txt\n", "does not exist"),
        ("model_name: not-registered\n", "No model named 'not-registered'"),
    ],
)
def test_bad_input_creates_nothing(tmp_path: Path, yaml_text: str, needle: str) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code != 0
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.output
    assert list(home.iterdir()) == []


def test_checkpoint_with_missing_file_is_refused(setup: tuple[Path, Path]) -> None:
    home, cfg = setup
    assert run_cli(home, "train", str(cfg), "--stop-at", "4").exit_code == 0
    (_ckpt(home, "tiny", 4) / OPTIMIZER_FILE).unlink()
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg), "--resume", "latest")
    assert res.exit_code != 0 and "incomplete" in res.stderr and "optimizer.pt" in res.stderr
    assert snapshot(home) == before


def test_generate_from_checkpoint_uses_its_tokenizer(setup: tuple[Path, Path]) -> None:
    home, cfg = setup
    assert run_cli(home, "train", str(cfg)).exit_code == 0
    args = ["generate", "tiny", "--prompt", "def ", "--max-new-tokens", "20", "--seed", "3"]
    a = run_cli(home, *args)
    b = run_cli(home, *args)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout  # seeded
    assert a.stdout.startswith("def ") and len(a.stdout.rstrip("\n")) == 24
    # Greedy: the tokens a full forward of that checkpoint's model picks, one by one.
    for ref in ("tiny/step-4", "tiny"):
        greedy = run_cli(home, "generate", ref, "-p", "def ", "--temperature", "0", "-n", "12")
        assert greedy.exit_code == 0, greedy.output
        assert greedy.stdout == greedy_text(home, ref, "def ", 12)
    bad = run_cli(home, "generate", "no-such-run")
    assert bad.exit_code != 0 and "neither a checkpoint nor a registered model" in bad.stderr
    bad = run_cli(home, "generate", "tiny", "--top-p", "1.5")
    assert bad.exit_code != 0 and "--top-p" in bad.stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    data = small_corpus(tmp_path / "c.txt")
    cfg = write_config(
        tmp_path / "long.yaml",
        data_path=str(data),
        max_steps=100000,
        warmup_steps=10,
        save_interval=100000,
        eval_interval=100000,
        sample_interval=0,
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LLMFORGE_DEBUG": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmforge", "--home", str(home), "train", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:  # wait until training steps are running
        if line.startswith("step 3/"):
            break
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Resume with" in out and "--resume latest" in out
    assert "Traceback" not in err
    ckpts = list((home / "runs/long/checkpoints").iterdir())
    assert len(ckpts) == 1 and ckpts[0].name.startswith("step-")
    res = run_cli(
        home,
        "train",
        str(cfg),
        "--resume",
        "latest",
        "--max-steps",
        "120000",
        "--stop-at",
        str(int(ckpts[0].name[5:]) + 1),
    )
    assert res.exit_code == 0, res.output
