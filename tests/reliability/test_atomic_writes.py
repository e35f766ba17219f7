"""SIGKILL at the exact write of a checkpoint, an export and the registry: nothing half-made.

``kill_at.py`` runs the real ``llmforge`` command with a Python audit hook that SIGKILLs the
process at one chosen file operation, the same one on every run (no timing, no race). Each
test then checks what a user would see: no ``step-*`` folder that is not a complete checkpoint,
the previous checkpoint byte-identical and loadable, an export folder as it was before the
export started, ``registry.json`` byte-identical. These pin the mechanisms (temp folder and
rename for checkpoints and exports, temp file and atomic replace for the registry): writing in
place would be caught every time, not 4 times in 5.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import kill_at
import pytest
import torch
from safetensors.torch import load_file

from helpers import snapshot
from llmforge.checkpoints.layout import list_checkpoints
from llmforge.checkpoints.loading import load_checkpoint_adapter
from train_helpers import run_cli, small_corpus, write_config

STEP8 = r"checkpoints/[^/]*step-000008[^/]*/"


def killed(home: Path, event: str, pattern: str, when: str, *args: str) -> None:
    """Run ``llmforge --home HOME ARGS`` and assert it was SIGKILLed at the operation."""
    res = kill_at.run(home, event, pattern, *args, when=when)
    assert res.returncode == -signal.SIGKILL, (
        f"not killed at {event} {pattern!r} (exit {res.returncode}): {res.stderr[-2000:]}"
    )


def step_folders(run_dir: Path) -> list[str]:
    """Every folder named like a checkpoint, complete or not (what a user sees with ls)."""
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if re.fullmatch(r"step-\d+", p.name))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted 8-step run (checkpoints 4 and 8) and its config."""
    root = tmp_path_factory.mktemp("atomic")
    cfg = write_config(
        root / "tiny.yaml", data_path=str(small_corpus(root / "c.txt")), sample_interval=0
    )
    home = root / "ref"
    home.mkdir()
    assert run_cli(home, "train", str(cfg)).exit_code == 0
    final = home / "runs" / "tiny" / "checkpoints" / "step-000008"
    return {
        "cfg": cfg,
        "home": home,
        "losses": json.loads((final / "trainer_state.json").read_text())["losses"],
        "weights": load_file(final / "model.safetensors"),
    }


@pytest.mark.parametrize(
    ("event", "pattern", "when"),
    [
        ("write", STEP8 + r"\.?config\.json[^/]*$", "after"),  # just after the weights
        ("write", STEP8 + r"\.?meta\.json[^/]*$", "after"),  # the last file
        ("rename", r"checkpoints/step-000008$", "before"),  # complete, not yet in place
    ],
    ids=["config", "meta", "rename"],
)
def test_a_checkpoint_killed_while_written_leaves_no_step_folder(
    reference: dict, tmp_path: Path, event: str, pattern: str, when: str
) -> None:
    home, cfg = tmp_path / "ws", reference["cfg"]
    home.mkdir()
    assert run_cli(home, "train", str(cfg), "--stop-at", "4").exit_code == 0
    run_dir = home / "runs" / "tiny"
    step4 = run_dir / "checkpoints" / "step-000004"
    before = snapshot(step4)

    killed(home, event, pattern, when, "train", str(cfg), "--resume", "latest")
    # Whatever the kill left is hidden: the only step folder is the complete step 4, unchanged.
    assert step_folders(run_dir) == ["step-000004"]
    assert list_checkpoints(run_dir) == [step4]
    assert snapshot(step4) == before
    load_checkpoint_adapter(step4)

    res = run_cli(home, "train", str(cfg), "--resume", "latest")
    assert res.exit_code == 0, res.output
    assert step_folders(run_dir) == ["step-000004", "step-000008"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    final = run_dir / "checkpoints" / "step-000008"
    assert json.loads((final / "trainer_state.json").read_text())["losses"] == reference["losses"]
    weights = load_file(final / "model.safetensors")
    assert all(torch.equal(weights[k], reference["weights"][k]) for k in reference["weights"])


@pytest.mark.parametrize("replace", [False, True], ids=["new-folder", "with-force"])
@pytest.mark.parametrize(
    ("event", "pattern", "when"),
    [
        ("write", r"/\.?out[^/]*/model\.safetensors$", "after"),  # the weights, copied
        ("write", r"/\.?out[^/]*/\.?README\.md[^/]*$", "after"),  # the model card, last
    ],
    ids=["weights", "card"],
)
def test_an_export_killed_while_written_leaves_the_destination_as_it_was(
    reference: dict, tmp_path: Path, replace: bool, event: str, pattern: str, when: str
) -> None:
    home = reference["home"]
    dest = tmp_path / "out"
    if replace:  # an earlier export of step 4 is there, and --force replaces it
        assert run_cli(home, "ckpt", "export", "tiny/step-4", str(dest)).exit_code == 0
    before = snapshot(dest)
    force = ["--force"] if replace else []
    killed(home, event, pattern, when, "ckpt", "export", "tiny/step-8", str(dest), *force)
    assert dest.exists() == replace
    assert snapshot(dest) == before
    if replace:  # still the export of step 4, whole
        ck4 = home / "runs" / "tiny" / "checkpoints" / "step-000004"
        assert (dest / "model.safetensors").read_bytes() == (ck4 / "model.safetensors").read_bytes()
    res = run_cli(home, "ckpt", "export", "tiny/step-8", str(dest), *force)
    assert res.exit_code == 0, res.output


def test_the_registry_killed_while_written_is_byte_identical(
    reference: dict, tmp_path: Path
) -> None:
    src = reference["home"]
    home = tmp_path / "ws"
    shutil.copytree(src, home)
    assert run_cli(home, "ckpt", "register", "tiny/step-4", "--name", "first").exit_code == 0
    registry = home / "models" / "registry.json"
    before = registry.read_bytes()

    # The registry is rewritten as a whole for every change: kill as soon as that write starts.
    killed(
        home,
        "write",
        r"models/\.?registry\.json",
        "after",
        "ckpt",
        "register",
        "tiny",
        "--name",
        "second",
    )
    assert registry.read_bytes() == before
    listed = json.loads(run_cli(home, "models", "list", "--json").stdout)
    assert [m["model_name"] for m in listed] == ["first"]
    # The name is still free: registering it again completes.
    res = run_cli(home, "ckpt", "register", "tiny", "--name", "second")
    assert res.exit_code == 0, res.output
    assert run_cli(home, "models", "validate").exit_code == 0
