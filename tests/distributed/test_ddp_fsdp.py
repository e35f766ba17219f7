"""Two CPU processes (gloo) train like one process with the same global batch, for DDP and FSDP.

Every run here is the real command: ``llmforge train CONFIG --nproc 2`` (torchrun's launcher
started by llmforge) or ``python -m torch.distributed.run ... -m llmforge train`` in a
subprocess. The reference is one process with ``grad_accum_steps`` doubled: it sees exactly the
micro-batches the two ranks share out, so the losses must agree up to the order of
floating-point sums (stated tolerance: 1e-5 relative; measured differences are ~1e-7).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dist_helpers import (
    ckpt,
    close,
    llmforge,
    losses,
    ok,
    torchrun,
    val_losses,
    weights,
    weights_close,
)
from train_helpers import run_cli, small_corpus, write_config

STEPS = 6
BASE = {
    "precision": "fp32",  # the 1e-5 tolerance is for fp32 sums (auto would pick bf16 here)
    "n_layers": 2,
    "dropout": 0.0,  # each rank has its own dropout stream: no dropout, so runs can agree
    "batch_size": 4,
    "grad_accum_steps": 1,
    "max_steps": STEPS,
    "warmup_steps": 1,
    "eval_interval": 3,
    "eval_steps": 3,  # not a multiple of 2: ranks pad their share of the validation batches
    "sample_interval": 3,  # samples under FSDP gather the whole model on every rank
    "save_interval": 3,
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A workspace with the one-process reference run and 2-process DDP and FSDP runs."""
    root = tmp_path_factory.mktemp("dist")
    home = root / "ws"
    home.mkdir()
    data = small_corpus(root / "corpus.txt", chars=20_000)
    cfg = write_config(root / "tiny.yaml", data_path=str(data), **BASE)
    ref = run_cli(home, "train", str(cfg), "--run-name", "one", "--set", "grad_accum_steps=2")
    assert ref.exit_code == 0, ref.output
    ddp = ok(llmforge(home, "train", str(cfg), "--nproc", "2", "--run-name", "ddp"))
    fsdp = ok(
        llmforge(
            home, "train", str(cfg), "--nproc", "2", "--run-name", "fsdp", "--set", "strategy=fsdp"
        )
    )
    return {"home": home, "cfg": cfg, "ddp": ddp, "fsdp": fsdp}


def test_ddp_matches_one_process_at_the_same_global_batch(ws: dict) -> None:
    home = ws["home"]
    out = ws["ddp"].stdout
    assert "Processes: 2 (ddp, cpu)" in out
    assert "= 8 sequences per step" in out and "Memory estimate per process" in out
    assert out.count("Starting new run") == 1  # rank 1 prints nothing
    one, ddp = losses(home, "one"), losses(home, "ddp")
    assert len(one) == STEPS and close(ddp, one), (ddp, one)
    assert len(val_losses(home, "one")) == 2  # steps 3 and 6
    assert close(val_losses(home, "ddp"), val_losses(home, "one"))
    a = load_file(ckpt(home, "one", STEPS) / "model.safetensors")
    b = load_file(ckpt(home, "ddp", STEPS) / "model.safetensors")
    assert all((a[k] - b[k]).abs().max() <= 1e-5 for k in a)
    state = json.loads((ckpt(home, "ddp", STEPS) / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng_by_rank"]) == 2
    meta = json.loads((ckpt(home, "ddp", STEPS) / "meta.json").read_text())
    assert meta["config"]["strategy"] == "ddp"


def test_fsdp_matches_one_process_and_saves_shards(ws: dict) -> None:
    home = ws["home"]
    assert "Processes: 2 (fsdp, cpu)" in ws["fsdp"].stdout
    assert close(losses(home, "fsdp"), losses(home, "one"))
    assert close(val_losses(home, "fsdp"), val_losses(home, "one"))
    one = weights(ckpt(home, "one", STEPS))
    assert weights_close(weights(ckpt(home, "fsdp", STEPS)), one)
    path = ckpt(home, "fsdp", STEPS)
    assert (path / "shards" / ".metadata").is_file()
    assert sorted(p.name for p in (path / "shards").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert not (path / "model.safetensors").exists() and not (path / "optimizer.pt").exists()
    meta = json.loads((path / "meta.json").read_text())
    assert meta["sharded"]["world_size"] == 2
    assert "step 3 sample:" in ws["fsdp"].stdout


def test_ddp_resume_under_torchrun_is_exact_and_at_one_process(ws: dict) -> None:
    home, cfg = ws["home"], ws["cfg"]
    first = ok(
        llmforge(home, "train", str(cfg), "--nproc", "2", "--run-name", "ddp-r", "--stop-at", "3")
    )
    assert "--nproc 2" in first.stdout  # the resume hint starts the same job
    runs = home / "runs"
    shutil.copytree(runs / "ddp-r", runs / "ddp-1")
    ok(torchrun(home, "train", str(cfg), "--run-name", "ddp-r", "--resume", "latest"))
    assert losses(home, "ddp-r") == losses(home, "ddp")
    assert val_losses(home, "ddp-r") == val_losses(home, "ddp")
    a = load_file(ckpt(home, "ddp-r", STEPS) / "model.safetensors")
    b = load_file(ckpt(home, "ddp", STEPS) / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)
    one = weights(ckpt(home, "one", STEPS))
    assert weights_close(weights(ckpt(home, "ddp-r", STEPS)), one)
    # 2 -> 1: one process continues the 2-process checkpoint with twice the accumulation.
    res = run_cli(home, "train", str(cfg), "--run-name", "ddp-1", "--resume", "latest")
    assert res.exit_code == 0, res.output
    assert "saved by 2 process(es) and resumes on 1" in res.stderr
    assert "grad_accum_steps 1 -> 2" in res.stderr
    assert close(losses(home, "ddp-1"), losses(home, "one"))
    assert close(val_losses(home, "ddp-1"), val_losses(home, "one"))
    assert weights_close(weights(ckpt(home, "ddp-1", STEPS)), one)


def test_ddp_resume_of_a_one_process_run_on_two(ws: dict) -> None:
    home, cfg = ws["home"], ws["cfg"]
    # 1 -> 2: a one-process run (accumulation 2) continued by two processes (accumulation 1).
    first = run_cli(
        home, "train", str(cfg), "--run-name", "one-2", "--set", "grad_accum_steps=2",
        "--stop-at", "3",
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    res = ok(
        llmforge(
            home, "train", str(cfg), "--nproc", "2", "--run-name", "one-2", "--resume", "latest"
        )
    )
    assert "saved by 1 process(es) and resumes on 2" in res.stderr
    assert "grad_accum_steps 2 -> 1" in res.stderr
    assert close(losses(home, "one-2"), losses(home, "one"))
    assert close(val_losses(home, "one-2"), val_losses(home, "one"))
    assert weights_close(weights(ckpt(home, "one-2", STEPS)), weights(ckpt(home, "one", STEPS)))


def test_fsdp_resume_is_exact_and_reshards_onto_one_process(ws: dict) -> None:
    home, cfg = ws["home"], ws["cfg"]
    args = ("train", str(cfg), "--nproc", "2", "--run-name", "fsdp-r", "--set", "strategy=fsdp")
    ok(llmforge(home, *args, "--stop-at", "3"))
    runs = home / "runs"
    shutil.copytree(runs / "fsdp-r", runs / "fsdp-1")
    ok(llmforge(home, *args, "--resume", "latest"))
    assert losses(home, "fsdp-r") == losses(home, "fsdp")
    assert val_losses(home, "fsdp-r") == val_losses(home, "fsdp")
    one = weights(ckpt(home, "one", STEPS))
    resumed = weights(ckpt(home, "fsdp-r", STEPS))
    assert weights_close(resumed, one)
    fsdp = weights(ckpt(home, "fsdp", STEPS))
    assert all(resumed[k].equal(fsdp[k]) for k in fsdp)  # exact at the same world size
    # The same checkpoint continued by one process: the shards are redistributed, and the
    # global batch is kept by doubling the accumulation.
    res = ok(llmforge(home, "train", str(cfg), "--run-name", "fsdp-1", "--resume", "latest"))
    assert "saved by 2 process(es) and resumes on 1" in res.stderr
    assert "grad_accum_steps 1 -> 2" in res.stderr
    assert close(losses(home, "fsdp-1"), losses(home, "fsdp"))
    assert close(val_losses(home, "fsdp-1"), val_losses(home, "one"))
    assert weights_close(weights(ckpt(home, "fsdp-1", STEPS)), one)


def test_a_sharded_checkpoint_generates_registers_exports_and_consolidates(
    ws: dict, tmp_path: Path
) -> None:
    home = ws["home"]
    gen = ("--prompt", "def ", "--max-new-tokens", "12", "--seed", "3")
    sharded = run_cli(home, "generate", "fsdp", *gen)
    assert sharded.exit_code == 0, sharded.output
    assert run_cli(home, "ckpt", "register", "fsdp", "--name", "from-fsdp").exit_code == 0
    registered = run_cli(home, "generate", "from-fsdp", *gen)
    assert registered.output == sharded.output
    out = tmp_path / "export"
    assert run_cli(home, "ckpt", "export", "fsdp", str(out)).exit_code == 0
    assert (out / "model.safetensors").is_file() and not (out / "shards").exists()
    # The export holds the trained weights: those of the same model trained in one process.
    exported = load_file(out / "model.safetensors")
    one = load_file(ckpt(home, "one", STEPS) / "model.safetensors")
    assert weights_close(exported, one)

    shutil.copytree(home / "runs" / "fsdp", home / "runs" / "fsdp-c")
    res = run_cli(home, "ckpt", "consolidate", "fsdp-c")
    assert res.exit_code == 0, res.output
    path = ckpt(home, "fsdp-c", STEPS)
    assert (path / "model.safetensors").is_file() and (path / "optimizer.pt").is_file()
    assert not (path / "shards").exists()
    consolidated = load_file(path / "model.safetensors")
    assert consolidated.keys() == exported.keys()
    assert all(consolidated[k].equal(exported[k]) for k in exported)
    assert run_cli(home, "generate", "fsdp-c", *gen).output == sharded.output
    again = run_cli(home, "ckpt", "consolidate", "fsdp-c")
    assert again.exit_code != 0 and "not a sharded checkpoint" in again.output
    # The consolidated checkpoint resumes in one process (strategy ddp) from its optimizer.
    res = run_cli(
        home,
        "train",
        str(ws["cfg"]),
        "--run-name",
        "fsdp-c",
        "--resume",
        "latest",
        "--max-steps",
        str(STEPS + 2),
    )
    assert res.exit_code == 0, res.output
    assert len(losses(home, "fsdp-c")) == STEPS + 2


def test_the_job_holds_the_run_lock_once_and_a_held_run_is_refused_before_launch(
    ws: dict,
) -> None:
    from llmforge.training import run_lock

    home, cfg = ws["home"], ws["cfg"]
    # rank 1 never took the lock (else the job above would have refused itself); released
    assert not (home / "runs" / "ddp" / ".lock").exists()
    held = run_lock.acquire(home / "runs" / "busy")
    try:
        res = llmforge(home, "train", str(cfg), "--nproc", "2", "--run-name", "busy")
    finally:
        held.release()
    assert res.returncode == 1
    assert "is being trained right now" in res.stderr and f"process {os.getpid()}" in res.stderr
    assert "Rank" not in res.stderr  # refused by the launcher: no process was started
