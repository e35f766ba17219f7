"""checkpoints/metadata.py in-process: a checkpoint's step is told by three files (its folder
name, ``trainer_state.json``, ``meta.json``), and a resume must never start from a step the
others contradict; the tokenizer comes back with where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmforge.checkpoints.metadata import load_checkpoint_tokenizer, load_state
from llmforge.errors import CheckpointError

RNG = {"torch_cpu": "AAAA", "python": [3, [1, 2], None]}


def _ckpt(root: Path, folder: str, state_step: int, meta_step: int | None) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": state_step, "rng": RNG}))
    meta = {} if meta_step is None else {"step": meta_step}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize(
    ("folder", "meta_step"),
    [("step-000006", 6), ("step-000006", None), ("my-copy", 6), ("my-copy", None)],
)
def test_a_checkpoint_whose_steps_agree_is_read(
    tmp_path: Path, folder: str, meta_step: int | None
) -> None:
    state = load_state(_ckpt(tmp_path, folder, 6, meta_step))
    assert state["step"] == 6 and state["rng"] == RNG


def test_a_checkpoint_without_meta_json_is_read_by_its_state(tmp_path: Path) -> None:
    path = _ckpt(tmp_path, "step-000004", 4, None)
    (path / "meta.json").unlink()
    assert load_state(path)["step"] == 4


@pytest.mark.parametrize(
    ("folder", "meta_step", "what", "other"),
    [
        ("step-000006", 6, "its folder name", 6),  # a state copied from another checkpoint
        ("step-000004", 6, "meta.json", 6),
        ("my-copy", 6, "meta.json", 6),  # a renamed folder is still checked against meta.json
    ],
)
def test_a_step_the_other_files_contradict_is_refused(
    tmp_path: Path, folder: str, meta_step: int, what: str, other: int
) -> None:
    path = _ckpt(tmp_path, folder, 4, meta_step)
    with pytest.raises(CheckpointError) as info:
        load_state(path)
    assert info.value.message == (
        f"The checkpoint is damaged: {path / 'trainer_state.json'} says step 4, "
        f"but {what} says step {other}."
    )
    assert info.value.hint.startswith("Nothing was written.")
    assert "llmforge ckpt list" in info.value.hint


def test_the_tokenizer_comes_back_with_its_origin(tmp_path: Path) -> None:
    from tiny_models import build_tokenizer

    ckpt = tmp_path / "step-000002"
    build_tokenizer(ckpt / "tokenizer")
    meta = {"tokenizer": {"kind": "override", "identifier": "other/tokenizer"}}
    tok = load_checkpoint_tokenizer(ckpt, meta)
    # What the resumed run records in its next checkpoint's meta.json.
    assert (tok.kind, tok.identifier) == ("override", "other/tokenizer")
    assert tok.decode(tok.encode("hello world")) == "hello world"
    native = load_checkpoint_tokenizer(ckpt, {})  # an older checkpoint without the record
    assert native.kind == "native"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "is missing or not valid JSON."),
        ("{not json", "is missing or not valid JSON."),
        ("[6]", "is not a JSON object."),
    ],
)
def test_an_unreadable_state_file_is_a_damaged_checkpoint(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = _ckpt(tmp_path, "step-000006", 6, 6)
    state = path / "trainer_state.json"
    state.unlink() if content is None else state.write_text(content)
    with pytest.raises(CheckpointError) as info:
        load_state(path)
    assert info.value.message == f"{state} {problem}"
    assert "another checkpoint" in info.value.hint


@pytest.mark.parametrize(
    ("file", "edit", "key", "got"),
    [
        ("trainer_state.json", {"step": -1}, "step", "-1"),
        ("trainer_state.json", {"step": "6"}, "step", "'6'"),
        (
            "trainer_state.json",
            {"rng": {"torch_cpu": 5, "python": [3, [], None]}},
            "rng.torch_cpu",
            "5",
        ),
        ("trainer_state.json", {"rng": None}, "rng", "None"),
        ("meta.json", {"lineage": 5}, "lineage", "5"),
        ("meta.json", {"step": 6.5}, "step", "6.5"),
    ],
)
def test_a_known_key_of_the_wrong_shape_is_named(
    tmp_path: Path, file: str, edit: dict, key: str, got: str
) -> None:
    from llmforge.checkpoints.metadata import load_meta

    path = _ckpt(tmp_path, "step-000006", 6, 6)
    data = json.loads((path / file).read_text())
    (path / file).write_text(json.dumps({**data, **edit}))
    with pytest.raises(CheckpointError) as info:
        load_state(path) if file == "trainer_state.json" else load_meta(path)
    message = info.value.message
    assert message.startswith(f"The checkpoint is damaged: {path / file} has a bad {key!r}: ")
    assert message.endswith(f" (got {got}).")
    assert info.value.hint.startswith("Nothing was written.")


def test_unknown_keys_are_kept_for_newer_versions(tmp_path: Path) -> None:
    from llmforge.checkpoints.metadata import load_meta

    path = _ckpt(tmp_path, "step-000006", 6, 6)
    (path / "meta.json").write_text(json.dumps({"step": 6, "added_later": [1]}))
    assert load_meta(path) == {"step": 6, "added_later": [1]}
