"""What a run decides for the user at start-up, and says so (issue 15, items 19-21, 23, 24).

- `--max-steps N` runs exactly N steps, even when the config's warmup is longer (capped).
- `precision: auto` (the default) resolves for the device, is printed and recorded, and a
  resume keeps the recorded value.
- Unset optimisation keys default by what is trained (from scratch, full fine-tune, LoRA).
- A resume that changes max_steps never makes the learning rate jump unless asked to.
- `--init-from` reports the disk size of the model it registers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmforge.device import bf16_is_fast
from llmforge.fsutil import human_bytes
from tiny_models import CORPUS
from train_helpers import run_cli, small_corpus, write_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUN = "tiny"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """runs/tiny: 6 steps, checkpoints at 2, 4, 6; no precision or weight_decay set."""
    root = tmp_path_factory.mktemp("defaults")
    ws = root / "ws"
    ws.mkdir()
    cfg = write_config(
        root / f"{RUN}.yaml",
        data_path=str(small_corpus(root / "c.txt")),
        max_steps=6,
        save_interval=2,
        keep_last=5,
        sample_interval=0,
    )
    res = run_cli(ws, "train", str(cfg))
    assert res.exit_code == 0, res.output
    return ws, cfg, res.stdout


@pytest.fixture
def ws(base: tuple[Path, Path, str], tmp_path: Path) -> Path:
    out = tmp_path / "ws"
    shutil.copytree(base[0], out)
    return out


def ckpt(ws: Path, step: int, run: str = RUN) -> Path:
    return ws / "runs" / run / "checkpoints" / f"step-{step:06d}"


def lrs(ws: Path, run: str = RUN) -> dict[int, float]:
    rows = [json.loads(line) for line in (ws / "runs" / run / "metrics.jsonl").open()]
    return {r["step"]: r["lr"] for r in rows if r["kind"] == "train"}


def test_max_steps_below_the_configs_warmup_runs_exactly_that_many_steps(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    small = ["n_layers=1", "d_model=32", "n_heads=2", "batch_size=2", "eval_steps=1"]
    args = ["--set", f"data_path={small_corpus(tmp_path / 'c.txt')}", "--set", "sample_interval=0"]
    for s in small:
        args += ["--set", s]
    res = run_cli(ws, "train", str(CONFIGS / "custom-transformer.yaml"), "--max-steps", "6", *args)
    assert res.exit_code == 0, res.output
    assert "warmup_steps (30) is not below max_steps (6)" in res.stderr
    assert "capped at 5" in res.stderr
    state = json.loads((ckpt(ws, 6, "custom-transformer") / "trainer_state.json").read_text())
    assert [s for s, _ in state["losses"]] == [1, 2, 3, 4, 5, 6]


def test_precision_auto_is_resolved_printed_recorded_and_kept_on_resume(
    base: tuple[Path, Path, str], ws: Path
) -> None:
    fast, why = bf16_is_fast(torch.device("cpu"))
    expected = "bf16" if fast else "fp32"
    assert f"Precision: {expected}" in base[2] and f"auto: {why}" in base[2]
    meta = json.loads((ckpt(ws, 6) / "meta.json").read_text())
    assert meta["config"]["precision"] == expected
    assert f"precision: {expected}" in (ws / "runs" / RUN / "config.yaml").read_text()
    res = run_cli(
        ws, "train", str(base[1]), "--resume", "latest", "--max-steps", "7",
        "--set", "precision=auto",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ignoring the changed" not in res.output
    assert json.loads((ckpt(ws, 7) / "meta.json").read_text())["config"]["precision"] == expected


def test_unset_optimisation_keys_default_by_what_is_trained(
    tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    res = run_cli(ws, "models", "import", str(tiny_qwen_repo), "--name", "tiny-qwen",
                  "--accept-license")  # fmt: skip
    assert res.exit_code == 0, res.output
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(CORPUS), encoding="utf-8")
    cases = [
        ({}, "from scratch", "learning_rate 2.0e-03 (the default for training from scratch)"),
        ({"model_name": "tiny-qwen"}, "full", "learning_rate 2.0e-05 (the default for a full"),
        ({"model_name": "tiny-qwen", "finetune": "lora"}, "lora", "2.0e-04 (the default for LoRA"),
    ]
    for extra, name, needle in cases:
        cfg = tmp_path / f"{name.replace(' ', '-')}.yaml"
        cfg.write_text(json.dumps({"data_path": str(data), **extra}))
        res = run_cli(ws, "train", str(cfg), "--dry-run")
        assert res.exit_code == 0, res.output
        assert needle in res.stdout, res.stdout
        assert "weight_decay " + ("0.1" if not extra else "0 ") in res.stdout
    # A real run records the chosen values; a key the user set is never changed.
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(
        json.dumps({"model_name": "tiny-qwen", "data_path": str(data), "max_steps": 2,
                    "block_size": 32, "batch_size": 2, "eval_steps": 1, "weight_decay": 0.01})
    )  # fmt: skip
    res = run_cli(ws, "train", str(cfg))
    assert res.exit_code == 0, res.output
    saved = json.loads((ckpt(ws, 2, "ft") / "meta.json").read_text())["config"]
    assert (saved["learning_rate"], saved["min_lr"], saved["weight_decay"]) == (2e-5, 2e-6, 0.01)


def test_extending_a_finished_run_keeps_the_lr_from_jumping(
    base: tuple[Path, Path, str], ws: Path
) -> None:
    final = lrs(ws)[6]
    assert final == pytest.approx(3e-4)  # the end of the cosine: min_lr
    res = run_cli(ws, "train", str(base[1]), "--resume", "latest", "--max-steps", "10")
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "max_steps changes from 6 to 10" in out and "schedule_on_extend: continue" in out
    assert "steps 7-10 run at its final 3.00e-04" in out
    assert all(lrs(ws)[s] == final for s in (7, 8, 9, 10))


def test_rewarm_and_replan_are_explicit_choices(
    base: tuple[Path, Path, str], tmp_path: Path
) -> None:
    cfg = base[1]
    rewarm = tmp_path / "rewarm"
    shutil.copytree(base[0], rewarm)
    res = run_cli(rewarm, "train", str(cfg), "--resume", "latest", "--max-steps", "10",
                  "--set", "schedule_on_extend=rewarm")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "a new warmup of 2 step(s)" in " ".join(res.stdout.split())
    got = lrs(rewarm)
    assert got[7] == pytest.approx(1.5e-3) and got[8] == pytest.approx(3e-3)
    assert got[10] == pytest.approx(3e-4)
    replan = tmp_path / "replan"
    shutil.copytree(base[0], replan)
    res = run_cli(replan, "train", str(cfg), "--resume", "latest", "--max-steps", "10",
                  "--set", "schedule_on_extend=replan")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "the learning rate jumps from 3.00e-04 to" in " ".join(res.stderr.split())
    assert lrs(replan)[7] > 3e-4


def test_an_extended_run_still_resumes_exactly(
    base: tuple[Path, Path, str], tmp_path: Path
) -> None:
    cfg = base[1]
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    for ws in (straight, paused):
        shutil.copytree(base[0], ws)
    args = ("train", str(cfg), "--resume", "latest", "--max-steps", "10")
    assert run_cli(straight, *args).exit_code == 0
    stopped = run_cli(paused, *args, "--stop-at", "8")
    assert stopped.exit_code == 0
    # the hint repeats --max-steps: without it the config's max_steps (6) would end the run
    assert "--resume latest --max-steps 10" in stopped.stdout
    assert run_cli(paused, *args).exit_code == 0
    a, b = ckpt(straight, 10), ckpt(paused, 10)
    sa = json.loads((a / "trainer_state.json").read_text())
    sb = json.loads((b / "trainer_state.json").read_text())
    assert sa["losses"] == sb["losses"] and sa["schedule"] == sb["schedule"]
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_init_from_reports_the_registered_models_disk_size(
    base: tuple[Path, Path, str], ws: Path
) -> None:
    res = run_cli(ws, "train", str(base[1]), "--init-from", f"{RUN}/step-6", "--name", "branch")
    assert res.exit_code == 0, res.output
    info = json.loads(run_cli(ws, "models", "info", "branch", "--json").stdout)
    disk = info.get("disk_bytes") or info["entry"]["disk_bytes"]
    assert f"disk: {human_bytes(disk)}" in res.stdout
    assert json.loads((ckpt(ws, 6, "branch") / "meta.json").read_text())["model_disk_bytes"] == disk
