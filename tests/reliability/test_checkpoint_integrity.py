"""Checkpoints and the models made from them: shared files are read-only, every checkpoint
carries a manifest that loading, validating, registering and exporting check, and deleting a
model that adapters or checkpoints need says so, lists them and asks for ``--force``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import flat, snapshot
from llmforge.store.registry import ModelRegistry
from llmforge.workspace import Workspace
from store_helpers import llmforge, refused
from train_helpers import small_corpus, write_config


# -- 3. shared files are read-only; checkpoints carry a manifest that every command checks ---
def _writable(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o222)


def test_files_shared_by_hard_link_are_read_only_and_everything_still_works(
    scratch_ws: Workspace, tiny_qwen_repo: Path
) -> None:
    imp = ("models", "import", str(tiny_qwen_repo), "--accept-license", "--name")
    for name in ("a", "b"):  # b shares a's blobs
        assert llmforge(scratch_ws.root, *imp, name).exit_code == 0
    assert llmforge(scratch_ws.root, "ckpt", "register", "scratch", "--name", "c").exit_code == 0
    models = scratch_ws.models_dir
    shared = [p for p in models.rglob("*") if p.is_file() and not p.is_symlink()]
    shared = [p for p in shared if p.parent.name != ".cache" and not p.name.endswith(".lock")]
    assert len([p for p in shared if "blobs" in p.parts]) >= 7
    ckpt = scratch_ws.runs_dir / "scratch/checkpoints/step-000004"
    linked = [p for p in ckpt.rglob("*") if p.is_file() and p.stat().st_nlink > 1]
    assert {p.name for p in linked} >= {"model.safetensors", "config.json"}
    writable = [p for p in shared + linked if _writable(p) and p.name != "registry.json"]
    writable = [p for p in writable if p.name != "README.md" or p.parent != models]
    assert writable == [], writable  # `>>` on any name of a shared file would change them all
    assert _writable(scratch_ws.registry_path)
    # Replacing, deleting and pruning work on read-only files.
    assert llmforge(scratch_ws.root, *imp, "a", "--force").exit_code == 0
    for name in ("a", "b", "c"):
        res = llmforge(scratch_ws.root, "models", "delete", name, "--yes")
        assert res.exit_code == 0, res.output
    assert not [p for p in (models / ".cache" / "blobs").iterdir()]  # every blob pruned
    from llmforge.training.checkpointing import prune_checkpoints

    shutil.copytree(ckpt, ckpt.with_name("step-000008"))  # a newer one, so step-4 is pruned
    assert prune_checkpoints(scratch_ws.runs_dir / "scratch", keep_last=1) == [ckpt]
    assert not ckpt.exists()


def test_every_checkpoint_lists_its_files_with_size_and_sha256(scratch_ws: Workspace) -> None:
    import hashlib

    ckpt = scratch_ws.runs_dir / "scratch/checkpoints/step-000004"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    files = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"]
    for rel, rec in manifest["files"].items():
        data = (ckpt / rel).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _append(p: Path) -> None:
    with open(p, "ab") as f:  # `echo x >> file`: what an editor keeping hard links does
        f.write(b"\n")


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-10])


def _flip_last_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))


def _add_file(p: Path) -> None:
    (p.parent / "model.safetensors.index.json").write_text("{}")


# (mutation, file, commands that must notice it). Loading checks sizes and the small files'
# sha256; `models validate`, `ckpt register` and `ckpt export` check every sha256.
LOAD = ("info", "generate", "resume", "validate", "register", "export")
FULL = ("validate", "register", "export")
DAMAGE = [
    pytest.param(_append, "model.safetensors", LOAD, id="appended-weights"),
    pytest.param(_truncate, "optimizer.pt", LOAD, id="truncated-optimizer"),
    pytest.param(_flip_last_byte, "trainer_state.json", LOAD, id="edited-state"),
    pytest.param(_flip_last_byte, "tokenizer/char_vocab.json", LOAD, id="edited-tokenizer"),
    pytest.param(_add_file, "model.safetensors", LOAD, id="added-file"),
    pytest.param(_flip_last_byte, "model.safetensors", FULL, id="same-size-weights"),
]


def _checkpoint_commands(ws: Workspace) -> dict[str, tuple[str, ...]]:
    cfg = str(ws.root.parent / "scratch.yaml")
    return {
        "info": ("ckpt", "info", "scratch"),
        "generate": ("generate", "scratch", "--prompt", "def", "--max-new-tokens", "2"),
        "resume": ("train", cfg, "--resume", "latest", "--max-steps", "6"),
        "validate": ("models", "validate"),
        "register": ("ckpt", "register", "scratch", "--name", "reg"),
        "export": ("ckpt", "export", "scratch", str(ws.root / "exported")),
    }


@pytest.mark.parametrize(("damage", "rel", "noticed_by"), DAMAGE)
def test_a_changed_or_truncated_checkpoint_file_is_noticed(
    scratch_ws: Workspace, damage, rel: str, noticed_by: tuple[str, ...]
) -> None:
    ckpt = scratch_ws.runs_dir / "scratch/checkpoints/step-000004"
    damage(ckpt / rel)
    shown = "model.safetensors.index.json" if damage is _add_file else rel
    before = snapshot(scratch_ws.root)
    for what, args in _checkpoint_commands(scratch_ws).items():
        if what not in noticed_by:
            continue
        res = llmforge(scratch_ws.root, *args)
        err = refused(res, "step-000004", code=3)
        if what == "validate":  # the report on stdout names the file, stderr sums up
            assert "failed validation" in err and shown in flat(res.stdout), res.output
        else:
            assert "is damaged or was changed after it was saved" in err and shown in err, err
        assert snapshot(scratch_ws.root) == before, what


def test_a_checkpoint_saved_before_manifests_loads_unverified(scratch_ws: Workspace) -> None:
    ckpt = scratch_ws.runs_dir / "scratch/checkpoints/step-000004"
    (ckpt / "manifest.json").unlink()
    cmds = _checkpoint_commands(scratch_ws)
    res = llmforge(scratch_ws.root, *cmds["info"])
    assert res.exit_code == 0, res.output
    assert "unverified: saved before checkpoints had a manifest" in flat(res.stdout)
    res = llmforge(scratch_ws.root, *cmds["validate"])
    assert res.exit_code == 0, res.output
    assert "-- runs/scratch/checkpoints/step-000004 (unverified" in flat(res.stdout)
    for what in ("generate", "register", "export", "resume"):
        res = llmforge(scratch_ws.root, *cmds[what])
        assert res.exit_code == 0, (what, res.output)


def test_a_sharded_checkpoint_has_a_manifest_too(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    data = small_corpus(tmp_path / "c.txt", chars=8000)
    cfg = write_config(
        tmp_path / "f.yaml", data_path=str(data), max_steps=2, warmup_steps=1, strategy="fsdp"
    )
    assert llmforge(home, "train", str(cfg)).exit_code == 0
    ckpt = home / "runs/f/checkpoints/step-000002"
    listed = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert "shards/.metadata" in listed and "shards/__0_0.distcp" in listed
    assert llmforge(home, "ckpt", "info", "f").exit_code == 0
    _truncate(ckpt / "shards/__0_0.distcp")
    for args in (
        ("generate", "f", "--prompt", "def", "--max-new-tokens", "2"),
        ("train", str(cfg), "--resume", "latest", "--max-steps", "4"),
        ("ckpt", "consolidate", "f"),
    ):
        refused(llmforge(home, *args), "shards/__0_0.distcp has", code=3)


# -- 5. deleting what adapters and checkpoints need: say so, list them, ask for --force ------
@pytest.fixture(scope="module")
def family(scratch_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cbase`` registered from ``scratch``; a LoRA run ``lr`` on it, the adapter model
    ``adapter`` registered from that run, and a full fine-tune run ``fr`` of it."""
    home = tmp_path_factory.mktemp("family") / "f"
    subprocess.run(["cp", "-a", str(scratch_run), str(home)], check=True)  # keeps hard links
    ws = home / "ws"
    assert llmforge(ws, "ckpt", "register", "scratch", "--name", "cbase").exit_code == 0
    common = {"model_name": "cbase", "data_path": str(home / "c.txt"), "block_size": 32}
    common.update(batch_size=4, max_steps=2, warmup_steps=1, sample_interval=0, eval_steps=1)
    for run, finetune in (("lr", "lora"), ("fr", "full")):
        (home / f"{run}.yaml").write_text(json.dumps({**common, "finetune": finetune}))
        res = llmforge(ws, "train", str(home / f"{run}.yaml"))
        assert res.exit_code == 0, res.output
    assert llmforge(ws, "ckpt", "register", "lr", "--name", "adapter").exit_code == 0
    return home


@pytest.fixture
def fam(family: Path, tmp_path: Path) -> Workspace:
    subprocess.run(["cp", "-a", str(family), str(tmp_path / "f")], check=True)
    return Workspace(root=(tmp_path / "f" / "ws").resolve())


def test_deleting_the_base_of_lora_adapters_and_runs_needs_force(fam: Workspace) -> None:
    before = snapshot(fam.root)
    res = llmforge(fam.root, "models", "delete", "cbase", "--yes")
    err = refused(res, "would leave 2 adapter(s) and checkpoint(s)", "--force", code=1)
    assert "the LoRA adapter model 'adapter'" in err
    assert "the LoRA checkpoint runs/lr/checkpoints/step-000002" in err
    assert "full fine-tunes, run fr, hold their own weights" in err
    assert snapshot(fam.root) == before
    # What the messages promise is what happens: the full fine-tune still loads after --force.
    res = llmforge(fam.root, "models", "delete", "cbase", "--force")
    assert res.exit_code == 0, res.output
    warn = flat(res.stderr)
    assert "These can no longer load" in warn and "'adapter'" in warn and "runs/lr/" in warn
    assert "still load and resume" in warn
    # every file of cbase is still held by the checkpoint it was registered from
    assert "freed 0 B" in res.stdout
    assert "shared by hard link with runs/scratch/checkpoints/step-000004 stay" in flat(res.stdout)
    gen = ("--prompt", "def", "--max-new-tokens", "2")
    assert llmforge(fam.root, "generate", "fr", *gen).exit_code == 0
    assert llmforge(fam.root, "generate", "scratch", *gen).exit_code == 0
    for broken in ("lr", "adapter"):
        res = llmforge(fam.root, "generate", broken, *gen)
        refused(res, "'cbase', which is not in the registry")


def test_deleting_a_lora_base_on_a_terminal_asks_with_the_list(
    fam: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer.testing

    wrapper = getattr(typer.testing, "_NamedTextIOWrapper", None)
    if wrapper is None:  # older typer: click's runner
        import click.testing

        wrapper = click.testing._NamedTextIOWrapper
    monkeypatch.setattr(wrapper, "isatty", lambda self: True)
    before = snapshot(fam.root)
    res = llmforge(fam.root, "models", "delete", "cbase", stdin="n\n")
    assert res.exit_code == 1 and "Delete 'cbase' anyway?" in res.output
    assert "runs/lr/checkpoints/step-000002" in flat(res.stderr)
    assert snapshot(fam.root) == before
    res = llmforge(fam.root, "models", "delete", "cbase", stdin="y\n")
    assert res.exit_code == 0, res.output
    assert "cbase" not in ModelRegistry(fam).names()


def test_deleting_an_adapter_needs_no_force_and_frees_what_only_it_held(fam: Workspace) -> None:
    res = llmforge(fam.root, "models", "delete", "adapter", "--yes")
    assert res.exit_code == 0, res.output
    assert res.stderr == ""  # nothing loads onto an adapter
    assert "freed 0 B" in res.stdout and "runs/lr/checkpoints/step-000002" in flat(res.stdout)
    assert (
        llmforge(fam.root, "generate", "lr", "--prompt", "def", "--max-new-tokens", "2").exit_code
        == 0
    )
