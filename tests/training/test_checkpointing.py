"""A run's checkpoint folders without a model: assembled hidden then renamed, their manifest,
pruning to ``keep_last``, tidying what a crash left, and every way a manifest can disagree."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
import torch

from llmforge.checkpoints import manifest
from llmforge.checkpoints.layout import list_checkpoints
from llmforge.errors import CheckpointDamagedError
from llmforge.training import checkpointing


def _checkpoint(run: Path, step: int, weights: bytes = b"w" * 10) -> Path:
    final = run / "checkpoints" / f"step-{step:06d}"
    final.parent.mkdir(parents=True, exist_ok=True)
    with checkpointing.checkpoint_folder(final) as tmp:
        (tmp / "model.safetensors").write_bytes(weights)
        (tmp / "tokenizer").mkdir()
        (tmp / "tokenizer" / "tokenizer.json").write_text("{}")
        (tmp / "meta.json").write_text(json.dumps({"step": step}))
    return final


def test_a_checkpoint_is_assembled_hidden_and_appears_whole_with_its_manifest(
    tmp_path: Path,
) -> None:
    final = tmp_path / "checkpoints" / "step-000002"
    final.parent.mkdir()
    with checkpointing.checkpoint_folder(final) as tmp:
        assert tmp == final.parent / f".tmp-step-000002-{os.getpid()}"
        assert tmp == checkpointing.temporary_dir(final)
        (tmp / "meta.json").write_text("{}")
        assert not final.exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-000002"]
    recorded = json.loads((final / "manifest.json").read_text())
    assert recorded == {
        "format": 1,
        "files": {"meta.json": {"size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}},
    }


def test_a_failed_save_leaves_the_earlier_checkpoint_of_that_step(tmp_path: Path) -> None:
    final = _checkpoint(tmp_path, 2, b"first")
    with pytest.raises(OSError), checkpointing.checkpoint_folder(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert (final / "model.safetensors").read_bytes() == b"first"
    assert manifest.check_manifest(final, full=True).ok
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-000002"]


def test_publish_writes_the_manifest_and_replaces_the_step(tmp_path: Path) -> None:
    final = _checkpoint(tmp_path, 4, b"old")
    tmp = checkpointing.temporary_dir(final)
    tmp.mkdir()
    (tmp / "meta.json").write_text("{}")
    (tmp / "model.safetensors").write_bytes(b"new")
    checkpointing.publish(tmp, final)
    assert (final / "model.safetensors").read_bytes() == b"new"
    assert sorted(json.loads((final / "manifest.json").read_text())["files"]) == [
        "meta.json",
        "model.safetensors",
    ]
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-000004"]


@pytest.mark.parametrize(("keep_last", "kept"), [(2, [6, 8]), (1, [8]), (0, [2, 4, 6, 8])])
def test_pruning_keeps_the_newest_checkpoints(tmp_path: Path, keep_last: int, kept: list) -> None:
    for step in (2, 8, 4, 6):
        _checkpoint(tmp_path, step)
    deleted = checkpointing.prune_checkpoints(tmp_path, keep_last)
    assert [int(p.name[5:]) for p in list_checkpoints(tmp_path)] == kept
    assert sorted(int(p.name[5:]) for p in deleted) == sorted({2, 4, 6, 8} - set(kept))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        f"step-{s:06d}" for s in kept
    ]


def test_pruning_renames_a_checkpoint_aside_before_deleting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (2, 4):
        _checkpoint(tmp_path, step)
    import shutil

    seen: list[str] = []
    monkeypatch.setattr(shutil, "rmtree", lambda p, **kw: seen.append(Path(p).name))
    checkpointing.prune_checkpoints(tmp_path, 1)
    assert seen == [f".old-step-000002-{os.getpid()}"]  # never a step-* name half deleted
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004"]


def test_clean_temporaries_removes_only_what_a_crash_left(tmp_path: Path) -> None:
    assert checkpointing.clean_temporaries(tmp_path) is None  # no checkpoints folder yet
    _checkpoint(tmp_path, 2)
    root = tmp_path / "checkpoints"
    for name in (".tmp-step-000004-123", ".old-step-000002-9", "notes"):
        (root / name).mkdir()
        (root / name / "f").write_text("x")
    checkpointing.clean_temporaries(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["notes", "step-000002"]


def test_rng_state_round_trips(tmp_path: Path) -> None:
    state = checkpointing.rng_state()
    json.loads(json.dumps(state))  # it goes into trainer_state.json
    expected = (torch.rand(3), random.random())
    checkpointing.set_rng_state(json.loads(json.dumps(state)))
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def _damaged(final: Path, how: str) -> str:
    if how == "missing":
        (final / "meta.json").unlink()
        return "meta.json is missing"
    if how == "truncated":
        (final / "model.safetensors").write_bytes(b"w" * 3)
        return "model.safetensors has 3 bytes, the manifest records 10"
    if how == "changed":
        (final / "meta.json").write_text('{"step": 9}')
        return "meta.json was changed (its sha256 differs from the manifest)"
    if how == "added":
        (final / "tokenizer" / "extra.txt").write_text("x")
        return "tokenizer/extra.txt was added after the checkpoint was saved"
    if how == "outside":
        data = json.loads((final / "manifest.json").read_text())
        data["files"]["../x"] = {"size": 1, "sha256": "0"}
        (final / "manifest.json").write_text(json.dumps(data))
        return "manifest.json lists '../x', a path outside the checkpoint"
    (final / "manifest.json").write_text(how)
    return "manifest.json is not a valid manifest"


@pytest.mark.parametrize(
    "how",
    ["missing", "truncated", "changed", "added", "outside", "[]", '{"files": {"a": 1}}', "{"],
)
def test_every_difference_from_the_manifest_is_named(tmp_path: Path, how: str) -> None:
    final = _checkpoint(tmp_path, 2)
    assert manifest.check_manifest(final).status == (
        "intact (3 files; checked sizes, and sha256 of the small files)"
    )
    phrase = _damaged(final, how)
    check = manifest.check_manifest(final)
    assert check.problems == [phrase] and not check.ok
    assert check.status == "DAMAGED: " + phrase
    with pytest.raises(CheckpointDamagedError) as info:
        manifest.require_intact(final)
    assert phrase in str(info.value) and str(final) in str(info.value)


def test_big_files_are_hashed_only_in_a_full_check(tmp_path: Path) -> None:
    size = manifest.ALWAYS_HASH_BYTES + 1
    final = _checkpoint(tmp_path, 2, b"a" * size)
    (final / "model.safetensors").write_bytes(b"b" * size)  # same size, other bytes
    assert manifest.check_manifest(final).ok
    full = manifest.check_manifest(final, full=True)
    assert full.problems == ["model.safetensors was changed (its sha256 differs from the manifest)"]
    assert full.files_checked == 3
    assert manifest.check_manifest(final, full=True).full


def test_a_file_at_the_hash_limit_is_always_hashed(tmp_path: Path) -> None:
    size = manifest.ALWAYS_HASH_BYTES
    final = _checkpoint(tmp_path, 2, b"a" * size)
    (final / "model.safetensors").write_bytes(b"b" * size)
    assert not manifest.check_manifest(final).ok


def test_hidden_files_and_old_checkpoints_are_not_damage(tmp_path: Path) -> None:
    final = _checkpoint(tmp_path, 2)
    (final / ".swp").write_text("editor")
    (final / "tokenizer" / ".DS_Store").write_text("x")
    assert manifest.check_manifest(final).ok
    (final / "manifest.json").unlink()
    old = manifest.check_manifest(final)
    assert old.has_manifest is False and old.ok and old.files_checked == 0 and old.path == final
    assert old.status == "unverified: saved before checkpoints had a manifest"
    assert manifest.require_intact(final) == old


@pytest.mark.parametrize(("added", "cut"), [(2, False), (5, False), (6, True)])
def test_the_error_names_up_to_five_problems(tmp_path: Path, added: int, cut: bool) -> None:
    final = _checkpoint(tmp_path, 2)
    for i in range(added):
        (final / f"added{i}.txt").write_text("x")
    with pytest.raises(CheckpointDamagedError) as info:
        manifest.require_intact(final)
    shown = "; ".join(f"added{i}.txt was added after the checkpoint was saved" for i in range(5))
    shown = "; ".join(shown.split("; ")[:added]) + ("; ..." if cut else "")
    assert info.value.message == (
        f"The checkpoint {final} is damaged or was changed after it was saved: {shown}."
    )
    assert info.value.hint == (
        "Use another checkpoint of the run (`llmforge ckpt list` shows them). If you changed "
        "it on purpose, delete its manifest.json to use it unverified."
    )


def test_require_intact_full_hashes_the_big_files(tmp_path: Path) -> None:
    size = manifest.ALWAYS_HASH_BYTES + 1
    final = _checkpoint(tmp_path, 2, b"a" * size)
    (final / "model.safetensors").write_bytes(b"b" * size)
    assert manifest.require_intact(final).ok
    with pytest.raises(CheckpointDamagedError):
        manifest.require_intact(final, full=True)


def test_a_manifest_that_cannot_be_read_or_lists_a_path_outside(tmp_path: Path) -> None:
    final = _checkpoint(tmp_path, 2)
    data = json.loads((final / "manifest.json").read_text())
    data["files"] = {"../x": {"size": 1, "sha256": "0"}, **data["files"]}
    (final / "manifest.json").write_text(json.dumps(data))
    (final / "meta.json").unlink()  # listed after the outside path: still checked
    assert manifest.check_manifest(final).problems == [
        "manifest.json lists '../x', a path outside the checkpoint",
        "meta.json is missing",
    ]
    (final / "manifest.json").unlink()
    (final / "manifest.json").mkdir()
    assert manifest.check_manifest(final).problems == [
        "manifest.json cannot be read (Is a directory)"
    ]


def test_save_checkpoint_writes_every_part_and_replaces_a_step_only_whole(tmp_path: Path) -> None:
    from llmforge.adapters.custom import CustomTransformerAdapter
    from llmforge.checkpoints.loading import load_checkpoint_adapter
    from llmforge.modeling.tokenizers import CharTokenizer
    from llmforge.modeling.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abc ")
    cfg = TransformerConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=8, n_heads=2)
    adapter = CustomTransformerAdapter(Transformer(cfg), tok)
    opt = torch.optim.AdamW(adapter.model.parameters())
    adapter.model(torch.tensor([[0, 1]]))[0].sum().backward()
    opt.step()
    state, meta = (
        {"step": 3, "losses": [[1, 2.5]]},
        {"step": 3, "architecture": "custom-transformer"},
    )
    run = tmp_path / "runs" / "r"  # a new run: its folders are created
    final = checkpointing.save_checkpoint(run, 3, adapter, opt, state, meta)
    assert final == run / "checkpoints" / "step-000003"
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-000003"]
    names = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    assert {"optimizer.pt", "trainer_state.json", "meta.json", "manifest.json"} <= names
    assert any(n.startswith("tokenizer/") for n in names) and "model.safetensors" in names
    assert json.loads((final / "trainer_state.json").read_text()) == state
    assert json.loads((final / "meta.json").read_text()) == meta
    saved = torch.load(final / "optimizer.pt", weights_only=True)
    assert saved["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert manifest.check_manifest(final, full=True).ok
    loaded, _ = load_checkpoint_adapter(final)
    want = adapter.model.state_dict()
    assert all(torch.equal(t, want[k]) for k, t in loaded.model.state_dict().items())
    # Saving the same step again (an earlier attempt of the run) replaces it whole.
    again = checkpointing.save_checkpoint(run, 3, adapter, opt, {"step": 3}, meta)
    assert again == final and json.loads((final / "trainer_state.json").read_text()) == {"step": 3}
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-000003"]


def test_a_lora_checkpoint_holds_only_the_adapter_and_restores_its_weights(
    tmp_path: Path,
) -> None:
    from llmforge.adapters import peft_lora
    from llmforge.adapters.custom import CustomTransformerAdapter
    from llmforge.modeling.tokenizers import CharTokenizer
    from llmforge.modeling.transformer import Transformer, TransformerConfig

    def lora_adapter(seed: int) -> CustomTransformerAdapter:
        torch.manual_seed(0)  # the same base both times
        tok = CharTokenizer.from_text("abc ")
        cfg = TransformerConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=8, n_heads=2)
        adapter = CustomTransformerAdapter(Transformer(cfg), tok)
        torch.manual_seed(seed)
        settings = {"r": 2, "alpha": 4.0, "dropout": 0.0, "target_modules": ["qkv"]}
        peft_lora.attach(adapter, settings)
        with torch.no_grad():  # B starts at zero: make the update visible
            for name, p in adapter.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        return adapter

    trained = lora_adapter(1)
    opt = torch.optim.AdamW(p for p in trained.model.parameters() if p.requires_grad)
    final = checkpointing.save_checkpoint(
        tmp_path / "run", 5, trained, opt, {"step": 5}, {"step": 5, "finetune": "lora"}
    )
    names = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    # The adapter only (the base stays in the registry), in peft's own format.
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert "model.safetensors" not in names and "README.md" not in names
    assert manifest.check_manifest(final, full=True).ok
    fresh = lora_adapter(2)  # other LoRA weights, then the checkpoint's loaded into them
    want = {n: t for n, t in trained.model.state_dict().items() if "lora_" in n}
    assert not all(torch.equal(fresh.model.state_dict()[n], t) for n, t in want.items())
    peft_lora.load_weights(fresh, final)
    assert all(torch.equal(fresh.model.state_dict()[n], t) for n, t in want.items())


def _undeletable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make every file called ``name`` impossible to delete (another user's file, a busy
    network file), as root cannot be refused otherwise."""
    real = os.unlink

    def unlink(path: object, *args: object, **kwargs: object) -> None:
        if os.path.basename(str(path)) == name:
            raise PermissionError(13, "Permission denied", str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


def test_a_checkpoint_that_cannot_be_fully_deleted_does_not_stop_the_pruning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (2, 4, 6):
        _checkpoint(tmp_path, step)
    (tmp_path / "checkpoints" / "step-000002" / "locked.bin").write_bytes(b"x")
    _undeletable(monkeypatch, "locked.bin")
    deleted = checkpointing.prune_checkpoints(tmp_path, 1)  # the run goes on
    assert sorted(p.name for p in deleted) == ["step-000002", "step-000004"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000006"]
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == [f".old-step-000002-{os.getpid()}", "step-000006"]  # hidden, never a step


def test_a_temporary_that_cannot_be_fully_deleted_does_not_stop_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _checkpoint(tmp_path, 2)
    root = tmp_path / "checkpoints"
    for name in (".tmp-step-000004-123", ".old-step-000002-9"):
        (root / name).mkdir()
        (root / name / "locked.bin").write_bytes(b"x")
        (root / name / "f").write_text("x")
    _undeletable(monkeypatch, "locked.bin")
    checkpointing.clean_temporaries(tmp_path)  # a resume still starts
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    assert not (root / ".tmp-step-000004-123" / "f").exists()  # the rest went
