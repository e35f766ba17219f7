"""``resume_trainer`` and ``_resumed_batches`` in-process, on a real run's checkpoint.

A tiny from-scratch run (dropout on, so the RNG matters) is trained once per module to step 4
of 6 and once, uninterrupted, to step 6. Each test resumes a copy of the first: the resumed
trainer must hold the checkpoint's weights, optimizer state and position and end where the
uninterrupted run ends, take only the resumable settings, and say what changed (the data,
the number of processes) or refuse what would not continue the run (another sampler kind, an
incomplete checkpoint). The whole command (`llmforge train --resume`) is tested in
tests/reliability/test_run_safety.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmforge.checkpoints.layout import list_checkpoints
from llmforge.checkpoints.loading import load_optimizer_state
from llmforge.checkpoints.manifest import write_manifest
from llmforge.config import TrainingConfig, load_config
from llmforge.errors import CheckpointError, TrainingError
from llmforge.training.resume import resume_trainer
from llmforge.training.run_setup import prepare_run
from llmforge.workspace import Workspace
from train_helpers import small_corpus, write_config

SETTINGS = {"max_steps": 6, "save_interval": 2, "eval_interval": 3, "sample_interval": 0}


def _train(root: Path, stop_at: int | None) -> tuple[Path, Path]:
    """A workspace under ``root`` whose run ``tiny`` trained to ``stop_at`` (or the end)."""
    root.mkdir(parents=True)
    data = small_corpus(root / "corpus.txt")
    config = write_config(root / "tiny.yaml", data_path=str(data), run_name="tiny", **SETTINGS)
    home = (root / "ws").resolve()
    home.mkdir()
    prepared = prepare_run(Workspace(home), load_config(config))
    try:
        prepared.trainer.fit(stop_at=stop_at)
    finally:
        prepared.close()
    return home, config


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The run stopped at step 4, and the final weights of the run trained straight to 6."""
    base = tmp_path_factory.mktemp("resume-trainer")
    stopped, config = _train(base / "stopped", stop_at=4)
    straight, _ = _train(base / "straight", stop_at=None)
    final = list_checkpoints(straight / "runs" / "tiny")[-1] / "model.safetensors"
    return {"stopped": stopped.parent, "config": config, "final": final}


@pytest.fixture
def run(runs: dict[str, Path], tmp_path: Path) -> tuple[Workspace, Path, Path]:
    """A copy of the stopped run: (workspace, its step-4 checkpoint, its config file)."""
    root = tmp_path / "copy"
    shutil.copytree(runs["stopped"], root)
    # the resumed run reads the corpus its checkpoint recorded (the original's): no test
    # here changes it
    config = root / "tiny.yaml"
    ckpt = root / "ws" / "runs" / "tiny" / "checkpoints" / "step-000004"
    assert ckpt.is_dir() and not (ckpt.parent / "step-000006").exists()
    return Workspace(root / "ws"), ckpt, config


def _edit_state(ckpt: Path, **changes: object) -> None:
    """Change ``trainer_state.json`` and re-write the manifest (as a consistent tamper)."""
    path = ckpt / "trainer_state.json"
    state = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    path.write_text(json.dumps(state))
    write_manifest(ckpt)


def _resume(ws: Workspace, ckpt: Path, config: Path, explicit: set[str] | None = None, **kw):
    cfg = load_config(config)
    return resume_trainer(ckpt, cfg, set() if explicit is None else explicit, ws, **kw)


def test_the_resumed_trainer_holds_the_checkpoint_and_ends_where_an_uninterrupted_run_ends(
    run: tuple[Workspace, Path, Path], runs: dict[str, Path]
) -> None:
    ws, ckpt, config = run
    trainer, meta, warnings, notes = _resume(ws, ckpt, config)
    assert (warnings, notes) == ([], [])
    assert trainer.state["step"] == 4 and trainer.run_dir == ckpt.parent.parent
    assert trainer.cfg.max_steps == 6 and trainer.cfg.to_dict() == meta["config"]
    saved = load_file(ckpt / "model.safetensors")
    model = trainer.adapter.model.state_dict()
    assert saved and all(torch.equal(model[k], v) for k, v in saved.items())
    restored = trainer.optimizer.state_dict()["state"]
    recorded = load_optimizer_state(ckpt)["state"]
    assert restored.keys() == recorded.keys() and restored
    for i, slots in recorded.items():
        assert all(torch.equal(restored[i][name], value) for name, value in slots.items())
    # the checkpoints it writes get their own step and losses, and the data it trains on
    assert not {"step", "train_loss", "val_loss"} & meta.keys()
    before = json.loads((ckpt / "meta.json").read_text())
    assert meta["data"] == before["data"] and meta["data"]["sha256"]
    assert trainer.sample_prompt and trainer.val_sampler is not None

    trainer.fit()
    final = load_file(runs["final"])
    now = trainer.adapter.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in final.items())


def test_only_resumable_settings_the_user_set_change_and_the_rest_are_reported(
    run: tuple[Workspace, Path, Path],
) -> None:
    ws, ckpt, config = run
    cfg = load_config(config)
    changed = TrainingConfig.from_dict(
        {**cfg.to_dict(), "max_steps": 9, "learning_rate": 1e-2, "min_lr": 1e-5, "log_interval": 2}
    )
    explicit = {"max_steps", "learning_rate", "min_lr", "batch_size"}  # batch_size: unchanged
    trainer, meta, warnings, notes = resume_trainer(ckpt, changed, explicit, ws)
    assert warnings == [
        "A resumed run keeps its original settings; ignoring the changed learning_rate, min_lr."
    ]
    assert trainer.cfg.learning_rate == cfg.learning_rate
    # log_interval is resumable but was not set by the user: the saved value stays
    assert trainer.cfg.max_steps == 9 and trainer.cfg.log_interval == cfg.log_interval
    assert meta["config"]["max_steps"] == 9
    assert len(notes) == 1 and notes[0].startswith("max_steps changes from 6 to 9 at step 4: ")
    assert [seg["from_step"] for seg in trainer.state["schedule"]] == [0, 4]


def test_a_resumable_setting_the_user_did_not_set_keeps_the_saved_value(
    run: tuple[Workspace, Path, Path],
) -> None:
    ws, ckpt, config = run
    cfg = load_config(config)
    longer = TrainingConfig.from_dict({**cfg.to_dict(), "max_steps": 9})
    trainer, _, warnings, notes = resume_trainer(ckpt, longer, set(), ws)
    assert trainer.cfg.max_steps == 6 and (warnings, notes) == ([], [])
    assert "schedule" not in trainer.state or len(trainer.state["schedule"]) == 1


def test_changed_training_data_is_said_before_the_run_goes_on(tmp_path: Path) -> None:
    # a run of its own: a resume reads the data path its checkpoint recorded
    home, config = _train(tmp_path / "own", stop_at=4)
    ckpt = list_checkpoints(home / "runs" / "tiny")[-1]
    corpus = config.parent / "corpus.txt"
    corpus.write_text(corpus.read_text() + "\nOne more line of text.\n")
    _, meta, warnings, _ = _resume(Workspace(home), ckpt, config)
    assert warnings == [
        f"The training data ({corpus}) changed since the run started; the resumed run will "
        "not match an uninterrupted one."
    ]
    before = json.loads((ckpt / "meta.json").read_text())["data"]["sha256"]
    assert meta["data"]["sha256"] != before  # the checkpoints record what it trains on now


def test_a_checkpoint_of_another_sampler_kind_is_refused(
    run: tuple[Workspace, Path, Path],
) -> None:
    ws, ckpt, config = run
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["sampler"]["kind"] == "random-window"
    _edit_state(ckpt, sampler={**state["sampler"], "kind": "packed-examples"})
    with pytest.raises(CheckpointError) as info:
        _resume(ws, ckpt, config)
    assert info.value.message == (
        f"{ckpt} was trained on packed-examples batches, but resuming it would make "
        "random-window batches (packed vs padded examples), so the run would not continue as "
        "it started. Nothing was written."
    )
    assert "--init-from" in info.value.hint


def test_a_state_without_a_recorded_sampler_kind_resumes(
    run: tuple[Workspace, Path, Path],
) -> None:
    ws, ckpt, config = run
    state = json.loads((ckpt / "trainer_state.json").read_text())
    sampler = {k: v for k, v in state["sampler"].items() if k != "kind"}
    _edit_state(ckpt, sampler=sampler)
    trainer, _, warnings, _ = _resume(ws, ckpt, config)
    assert trainer.state["step"] == 4 and warnings == []


def test_a_run_saved_by_two_processes_resumes_on_one_with_the_same_global_batch(
    run: tuple[Workspace, Path, Path],
) -> None:
    ws, ckpt, config = run
    state = json.loads((ckpt / "trainer_state.json").read_text())
    _edit_state(ckpt, world_size=2, rng_by_rank=[state["rng"], state["rng"]])
    trainer, meta, warnings, _ = _resume(ws, ckpt, config)
    assert trainer.cfg.grad_accum_steps == 2 and meta["config"]["grad_accum_steps"] == 2
    assert len(warnings) == 1
    assert warnings[0].startswith("This run was saved by 2 process(es) and resumes on 1: ")


def test_an_incomplete_checkpoint_is_refused_before_anything_is_loaded(
    run: tuple[Workspace, Path, Path],
) -> None:
    ws, ckpt, config = run
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors is missing"):
        _resume(ws, ckpt, config)


def test_a_damaged_state_step_is_refused(run: tuple[Workspace, Path, Path]) -> None:
    ws, ckpt, config = run
    _edit_state(ckpt, step=3)
    with pytest.raises(CheckpointError, match=r"says step 3, but its folder name says step 4"):
        _resume(ws, ckpt, config)


def test_a_memory_limit_given_on_resume_is_checked_before_the_model_is_loaded(
    run: tuple[Workspace, Path, Path],
) -> None:
    ws, ckpt, config = run
    cfg = load_config(config)
    tight = TrainingConfig.from_dict({**cfg.to_dict(), "memory_limit_gb": 1e-6})
    with pytest.raises(TrainingError) as info:
        resume_trainer(ckpt, tight, {"memory_limit_gb"}, ws)
    # refused from the checkpoint's config, before its weights were read
    assert "but only 1.1 KB is available (memory_limit_gb); the model was not built" in (
        info.value.message
    )
    # the same limit, not set by the user, is not the run's: it resumes
    trainer, *_ = resume_trainer(ckpt, tight, set(), ws)
    assert trainer.cfg.memory_limit_gb == cfg.memory_limit_gb
