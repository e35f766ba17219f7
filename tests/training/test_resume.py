"""training/resume.py in-process, on configs and checkpoint folders built without training: what
a resume refuses (an older checkpoint, a damaged RNG state, an optimizer state of another
model), which settings it keeps, and what it does to the learning-rate schedule when
``max_steps`` changes. The whole runs are in tests/reliability/test_run_safety.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmforge.config import TrainingConfig
from llmforge.errors import CheckpointError, ConfigError, TrainingError
from llmforge.training.checkpointing import rng_state
from llmforge.training.distributed import DistContext
from llmforge.training.optim import lr_at
from llmforge.training.resume import (
    _changed_keys,
    _restore,
    _resumed_data,
    _saved_config,
    extend_schedule,
    refuse_older,
    world_size,
)

PLAN = {"max_steps": 8, "warmup_steps": 2, "learning_rate": 3e-3, "min_lr": 3e-4}


def _cfg(**kw: object) -> TrainingConfig:
    return TrainingConfig.from_dict({**PLAN, **kw})


def _run(root: Path, *steps: int) -> list[Path]:
    """A run folder with a checkpoint (just its meta.json) at each of ``steps``."""
    out = []
    for s in steps:
        path = root / "myrun" / "checkpoints" / f"step-{s:06d}"
        path.mkdir(parents=True)
        (path / "meta.json").write_text(json.dumps({"step": s}))
        out.append(path)
    return out


# --- refuse_older -------------------------------------------------------------------------


def test_resuming_an_older_checkpoint_is_refused_naming_the_newer_ones(tmp_path: Path) -> None:
    old, _, _ = _run(tmp_path, 2, 4, 6)
    # an unfinished checkpoint (no meta.json) is not a newer one
    (old.parent / "step-000008").mkdir()
    with pytest.raises(TrainingError) as info:
        refuse_older(old, "myrun/step-2")
    assert info.value.message == (
        "--resume myrun/step-2 would continue the run 'myrun' from step 2, but the run already "
        "has newer checkpoints (step-000004, step-000006); training on from step 2 would "
        "overwrite them with different weights. Nothing was written."
    )
    assert info.value.hint == (
        "To continue the run where it is, use --resume latest. To branch off at step 2, start "
        "a new run from its weights: llmforge train CONFIG --init-from myrun/step-2 --name "
        "NEW_MODEL (the checkpoint is registered as NEW_MODEL and the run is named after it; "
        "--run-name picks another name)."
    )


def test_the_newest_checkpoint_and_folders_outside_a_run_resume(tmp_path: Path) -> None:
    _, newest = _run(tmp_path, 2, 4)
    refuse_older(newest, "latest")
    # the same run's step-2 copied elsewhere, and a checkpoint folder under another name
    copy = tmp_path / "elsewhere" / "step-000002"
    copy.mkdir(parents=True)
    refuse_older(copy, str(copy))
    renamed = newest.parent / "step-2-backup"
    renamed.mkdir()
    refuse_older(renamed, str(renamed))


def test_the_resume_target_is_the_runs_newest_checkpoint_or_refused(tmp_path: Path) -> None:
    """``--resume latest`` and ``--resume RUN/step-N`` as ``llmforge train`` resolves them."""
    from llmforge.training.run_setup import _resume_target
    from llmforge.workspace import Workspace

    ws = Workspace(tmp_path)
    _, newest = _run(ws.runs_dir, 2, 4)
    cfg = _cfg(run_name="myrun")
    assert _resume_target(ws, cfg, "latest") == newest
    assert _resume_target(ws, cfg, "myrun/step-4") == newest
    with pytest.raises(TrainingError, match=r"newer checkpoints \(step-000004\)"):
        _resume_target(ws, cfg, "myrun/2")


# --- the memory pre-check's model size --------------------------------------------------

SHAPE = {"architecture": "custom-transformer", "vocab_size": 64, "n_layers": 1, "d_model": 8}
PARAMS = 64 * 8 + 16 * 8 + (12 * 8 * 8 + 4 * 8) + 2 * 8  # embeddings, one block, final norm


def test_the_size_checked_before_a_resume_is_the_checkpoints_or_its_lora_base(
    tmp_path: Path,
) -> None:
    from helpers import DEFAULT_FILES, make_model
    from llmforge.training.resume import _resume_shape
    from llmforge.workspace import Workspace

    ws = Workspace(tmp_path)
    config = json.dumps({**SHAPE, "block_size": 16, "n_heads": 2}).encode()
    (ckpt,) = _run(ws.runs_dir, 4)
    (ckpt / "config.json").write_bytes(config)
    full = _resume_shape(ws, ckpt, {"finetune": "full"})
    assert full is not None and (full.parameters, full.trainable) == (PARAMS, PARAMS)
    assert _resume_shape(ws, ckpt, {}) == full
    # a LoRA checkpoint holds only the adapter: the size is its base's, frozen
    make_model(ws, "base", files={**DEFAULT_FILES, "config.json": config})
    (ckpt / "config.json").unlink()
    lora = _resume_shape(ws, ckpt, {"finetune": "lora", "base": {"model_name": "base"}})
    assert lora is not None and (lora.parameters, lora.trainable) == (PARAMS, 0)
    # a base that is gone is reported precisely by the loader later: no pre-check
    assert _resume_shape(ws, ckpt, {"finetune": "lora", "base": {"model_name": "gone"}}) is None
    assert _resume_shape(ws, ckpt, {"finetune": "lora"}) is None


# --- extend_schedule ----------------------------------------------------------------------

INITIAL = {"from_step": 0, "max_steps": 8, "warmup_steps": 2, "mode": "initial"}


@pytest.mark.parametrize(("new", "start"), [(8, 4), (8, 8), (6, 6), (6, 7)])
def test_a_resume_that_keeps_the_length_or_is_past_it_changes_no_schedule(
    new: int, start: int
) -> None:
    state: dict = {}
    assert extend_schedule(_cfg(max_steps=new), _cfg(), state, start) == ([], [])
    assert state == {}


@pytest.mark.parametrize(("start", "first"), [(8, 9), (4, 9)])
def test_continue_keeps_the_final_rate_over_the_added_steps(start: int, first: int) -> None:
    state: dict = {"step": start}
    notes, warnings = extend_schedule(_cfg(max_steps=12), _cfg(), state, start)
    assert warnings == []
    assert state["schedule"] == [
        INITIAL,
        {"from_step": start, "max_steps": 12, "mode": "continue"},
    ]
    assert notes == [
        f"max_steps changes from 8 to 12 at step {start}: the learning rate keeps the run's "
        f"schedule (schedule_on_extend: continue); steps {first}-12 run at its final 3.00e-04. "
        "For a new warmup and cosine decay over the added steps, resume with "
        "--set schedule_on_extend=rewarm."
    ]
    assert lr_at(11, _cfg(max_steps=12), state["schedule"]) == pytest.approx(3e-4)


def test_continue_to_a_shorter_run_says_where_the_decay_stops() -> None:
    state: dict = {}
    run_cfg = _cfg(max_steps=6)
    notes, warnings = extend_schedule(run_cfg, _cfg(), state, 3)
    assert warnings == []
    assert state["schedule"][1] == {"from_step": 3, "max_steps": 6, "mode": "continue"}
    final = lr_at(5, run_cfg, state["schedule"])
    assert final > 3e-4 * 1.5  # the decay is cut short
    assert notes[0].endswith(
        f"the run ends at step 6 before the decay completes (lr {final:.2e}). For a new warmup "
        "and cosine decay over the added steps, resume with --set schedule_on_extend=rewarm."
    )


@pytest.mark.parametrize(("new", "warmup"), [(12, 2), (10, 1), (9, 0)])
def test_rewarm_fits_a_new_warmup_into_the_added_steps(new: int, warmup: int) -> None:
    state: dict = {}
    run_cfg = _cfg(max_steps=new, schedule_on_extend="rewarm")
    notes, warnings = extend_schedule(run_cfg, _cfg(), state, 8)
    seg = {"from_step": 8, "max_steps": new, "mode": "rewarm", "warmup_steps": warmup}
    assert (state["schedule"], warnings) == ([INITIAL, seg], [])
    assert notes == [
        f"max_steps changes from 8 to {new} at step 8: a new warmup of {warmup} step(s) and "
        f"cosine decay over steps 9-{new} (schedule_on_extend: rewarm): the lr goes from "
        "3.00e-04 up to 3.00e-03 and down to 3.00e-04."
    ]


def test_rewarm_from_step_0_starts_from_no_rate_and_the_rate_before_is_the_old_plans() -> None:
    run_cfg = _cfg(max_steps=12, schedule_on_extend="rewarm")
    notes, _ = extend_schedule(run_cfg, _cfg(), {}, 0)
    assert "the lr goes from 0.00e+00 up to" in notes[0]
    before = lr_at(4, _cfg(), None)  # step 5 of the 8-step plan, mid-decay
    notes, _ = extend_schedule(run_cfg, _cfg(), {}, 5)
    assert f"the lr goes from {before:.2e} up to" in notes[0]


def test_an_extension_from_step_0_without_warmup_starts_from_no_rate() -> None:
    saved = _cfg(warmup_steps=0)
    run_cfg = _cfg(max_steps=12, warmup_steps=0, schedule_on_extend="replan")
    _, warnings = extend_schedule(run_cfg, saved, {}, 0)
    assert "the learning rate jumps from 0.00e+00 to 3.00e-03" in warnings[0]


def test_replan_warns_that_the_rate_jumps() -> None:
    state: dict = {}
    run_cfg = _cfg(max_steps=16, schedule_on_extend="replan")
    notes, warnings = extend_schedule(run_cfg, _cfg(), state, 6)
    assert notes == []
    assert state["schedule"] == [INITIAL, {"from_step": 6, "max_steps": 16, "mode": "replan"}]
    before, after = lr_at(5, _cfg(), None), lr_at(6, _cfg(max_steps=16), None)
    assert after > before * 1.5  # the stretched decay is much higher at step 6
    assert warnings == [
        "max_steps changes from 8 to 16 at step 6: the cosine decay is stretched over all 16 "
        f"steps (schedule_on_extend: replan): the learning rate jumps from {before:.2e} to "
        f"{after:.2e}, and the loss may rise for a while."
    ]


def test_a_second_extension_appends_to_the_recorded_schedule() -> None:
    """The length changed once already: the plan comes from trainer_state.json, not the
    saved config, and its last segment's length is the old one."""
    first = {"from_step": 8, "max_steps": 12, "mode": "continue"}
    state: dict = {"schedule": [INITIAL, first]}
    notes, _ = extend_schedule(_cfg(max_steps=16), _cfg(max_steps=12), state, 12)
    assert state["schedule"] == [
        INITIAL,
        first,
        {"from_step": 12, "max_steps": 16, "mode": "continue"},
    ]
    assert notes[0].startswith("max_steps changes from 12 to 16 at step 12: ")
    assert "steps 13-16 run at its final 3.00e-04" in notes[0]
    # the same length as recorded: nothing changes, even though the saved config says 8
    state = {"schedule": [INITIAL, first]}
    assert extend_schedule(_cfg(max_steps=12), _cfg(), state, 10) == ([], [])
    assert state["schedule"] == [INITIAL, first]


# --- the config a resume keeps ------------------------------------------------------------


def test_only_changed_settings_that_a_resume_cannot_take_are_reported() -> None:
    saved = _cfg(precision="bf16", batch_size=4)
    cfg = _cfg(max_steps=20, learning_rate=1e-3, batch_size=8, dropout=0.3, run_name="other")
    explicit = {"max_steps", "run_name", "learning_rate", "batch_size", "warmup_steps"}
    # dropout changed but was not given; warmup_steps was given but is the same
    assert _changed_keys(cfg, saved, explicit) == ["batch_size", "learning_rate"]
    assert _changed_keys(cfg, saved, set()) == []


def test_precision_auto_is_not_a_change_but_another_precision_is() -> None:
    saved = _cfg(precision="bf16")
    assert _changed_keys(_cfg(precision="auto"), saved, {"precision"}) == []
    assert _changed_keys(_cfg(precision="fp32"), saved, {"precision"}) == ["precision"]
    # a setting skipped (resumable, unchanged, auto) does not hide the changed ones after it
    explicit = {"eval_interval", "precision", "seed", "warmup_steps"}
    changed = _cfg(eval_interval=7, precision="auto", seed=3, warmup_steps=1)
    assert _changed_keys(changed, saved, explicit) == ["seed", "warmup_steps"]
    auto = _cfg(precision="auto")
    assert _changed_keys(_cfg(precision="fp32"), auto, {"precision"}) == ["precision"]


def test_a_checkpoint_from_before_packing_resumes_padded(tmp_path: Path) -> None:
    old = _saved_config(tmp_path, {"config": {"max_steps": 5}})
    assert (old.packing, old.max_steps) == (False, 5)
    assert _saved_config(tmp_path, {}).packing is False
    recorded = {"max_steps": 5, "packing": True}
    assert _saved_config(tmp_path, {"config": recorded}).packing is True
    assert recorded == {"max_steps": 5, "packing": True}


def test_a_damaged_saved_config_names_the_checkpoints_meta_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _saved_config(tmp_path, {"config": {"max_steps": "many"}})
    assert str(tmp_path / "meta.json") in str(info.value)


def test_the_data_record_keeps_the_hub_lineage_the_run_started_with() -> None:
    now = {"sha256": "b", "hub": {"repo": "d", "revision": "2"}}
    meta = {"data": {"sha256": "a", "hub": {"repo": "d", "revision": "1"}}}
    assert _resumed_data(meta, now) == {**now, "hub_before_resume": {"repo": "d", "revision": "1"}}
    assert _resumed_data({"data": {"hub": now["hub"]}}, now) == now
    assert _resumed_data({}, now) == now
    assert _resumed_data({"data": {"sha256": "a"}}, {"sha256": "b"}) == {"sha256": "b"}


@pytest.mark.parametrize(
    ("processes", "env", "expected"),
    [(3, "5", 3), (None, "4", 4), (None, None, 1), (None, "0", 1), (None, "two", 1)],
)
def test_the_world_size_comes_from_nproc_then_torchrun(
    monkeypatch: pytest.MonkeyPatch, processes: int | None, env: str | None, expected: int
) -> None:
    if env is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", env)
    assert world_size(processes) == expected


# --- _restore: the optimizer state and the RNG ---------------------------------------------


def _optimizer(n: int = 2) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.ones(3)) for _ in range(n)]
    return torch.optim.AdamW(params, lr=0.1)


def _saved_optimizer(ckpt: Path, n: int = 2) -> torch.optim.Optimizer:
    """An optimizer after one step, its state saved in ``ckpt`` as a checkpoint does."""
    opt = _optimizer(n)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.arange(3.0)
    opt.step()
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(opt.state_dict(), ckpt / "optimizer.pt")
    return opt


def _rng(seed: int) -> tuple[dict, torch.Tensor]:
    """The RNG state after ``torch.manual_seed(seed)``, and the draws that follow it."""
    torch.manual_seed(seed)
    state = json.loads(json.dumps(rng_state()))  # as trainer_state.json holds it
    return state, torch.rand(4)


def test_restore_loads_the_optimizer_state_and_the_rng(tmp_path: Path) -> None:
    saved = _saved_optimizer(tmp_path)
    rng, draws = _rng(1)
    opt = _optimizer()
    torch.manual_seed(99)
    _restore(tmp_path, None, opt, {"rng": rng}, DistContext(), False)
    assert torch.equal(torch.rand(4), draws)
    want = saved.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], want)


@pytest.mark.parametrize(("rank", "world", "seed"), [(1, 2, 11), (0, 2, 10), (0, 3, 7)])
def test_each_rank_gets_its_own_rng_state_only_in_the_same_world(
    tmp_path: Path, rank: int, world: int, seed: int
) -> None:
    """Saved by 2 processes: each rank resumes its own stream; at another world size every
    rank starts from rank 0's (``rng``)."""
    _saved_optimizer(tmp_path)
    (r7, d7), (r10, d10), (r11, d11) = _rng(7), _rng(10), _rng(11)
    state = {"rng": r7, "rng_by_rank": [r10, r11]}
    dist = DistContext(rank=rank, world_size=world)
    _restore(tmp_path, None, _optimizer(), state, dist, False)
    assert torch.equal(torch.rand(4), {7: d7, 10: d10, 11: d11}[seed])


@pytest.mark.parametrize(
    ("rng", "error"),
    [
        (None, "KeyError"),  # no "rng" at all
        ({"python": [3, [1], None]}, "KeyError"),  # no torch state
        ({"torch_cpu": "AAAA", "python": [3, [1], None]}, "RuntimeError"),  # truncated
        ({"torch_cpu": 5, "python": [3, [1], None]}, "TypeError"),
    ],
)
def test_a_damaged_rng_state_is_refused_as_a_damaged_checkpoint(
    tmp_path: Path, rng: dict | None, error: str
) -> None:
    _saved_optimizer(tmp_path)
    state = {} if rng is None else {"rng": rng}
    with pytest.raises(CheckpointError) as info:
        _restore(tmp_path, None, _optimizer(), state, DistContext(), False)
    assert info.value.message == (
        f"The checkpoint is damaged: the RNG state in {tmp_path / 'trainer_state.json'} "
        f"cannot be restored ({error})."
    )
    assert info.value.hint == "Nothing was written. Use another checkpoint of the run."


def test_an_optimizer_state_of_another_model_is_refused(tmp_path: Path) -> None:
    _saved_optimizer(tmp_path, n=2)
    rng, _ = _rng(1)
    with pytest.raises(CheckpointError) as info:
        _restore(tmp_path, None, _optimizer(n=3), {"rng": rng}, DistContext(), False)
    assert info.value.message.startswith(
        f"The optimizer state in {tmp_path} does not fit the model ("
    )
    assert info.value.hint == (
        "The checkpoint is damaged or from another model; use another checkpoint."
    )


def test_a_sharded_checkpoint_is_refused_by_a_run_that_is_not_sharded(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        _restore(tmp_path, None, _optimizer(), {}, DistContext(strategy="ddp"), True)
    assert info.value.message == (
        f"{tmp_path} is a sharded (FSDP) checkpoint, but this run is not sharded."
    )
    assert f"llmforge ckpt consolidate {tmp_path}" in info.value.hint
