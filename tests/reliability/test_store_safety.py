"""The model store under attack: hand-edited registries, kills and races, shared files, odd
filesystems, hostile text. Nothing a user has is lost, and every refusal is one clear paragraph.

Kills and races are made deterministic with a Python audit hook in a small launcher: the real
``llmforge`` command runs in a subprocess and is SIGKILLed (or paused) exactly when it is
about to rename, delete or write a given path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import flat, make_model, snapshot
from llmforge.cli import app
from llmforge.registry import ModelRegistry
from llmforge.workspace import Workspace
from train_helpers import small_corpus, write_config

# Runs ``llmforge ARGS`` and SIGKILLs itself at the NTH audit event EVENT whose argument ARG
# contains NEEDLE (the hook runs before the operation: the rename or delete does not happen).
KILLER = r"""
import os, signal, sys
event, arg, needle, nth = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seen = [0]
def hook(ev, args):
    if ev == event and len(args) > arg and needle in str(args[arg]):
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
from llmforge.cli import main
sys.argv = ["llmforge", *sys.argv[5:]]
main()
"""

# Runs ``llmforge ARGS`` and, at its first shutil.rmtree, writes MARKER and waits for GO.
PAUSER = r"""
import os, sys, time
marker, go = sys.argv[1], sys.argv[2]
paused = [False]
def hook(ev, args):
    if ev == "shutil.rmtree" and not paused[0]:
        paused[0] = True
        open(marker, "w").close()
        end = time.time() + 60
        while not os.path.exists(go) and time.time() < end:
            time.sleep(0.01)
sys.addaudithook(hook)
from llmforge.cli import main
sys.argv = ["llmforge", *sys.argv[3:]]
main()
"""


def llmforge(home: Path, *args: str, stdin: str | None = None):
    """``llmforge --home HOME ARGS`` in-process (stderr separate)."""
    return CliRunner().invoke(app, ["--home", str(home), *args], input=stdin)


def killed_at(home: Path, event: str, arg: int, needle: str, *args: str, nth: int = 1):
    """Run ``llmforge --home HOME ARGS`` in a subprocess that is killed at the given event."""
    cmd = [sys.executable, "-c", KILLER, event, str(arg), needle, str(nth), "--home", str(home)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=120, env=_env(), check=False
    )


def _env() -> dict[str, str]:
    env = {**os.environ, "LLMFORGE_DEBUG": ""}
    env.pop("HF_TOKEN", None)
    return env


def refused(res, *phrases: str, code: int | None = None) -> str:
    """A clean refusal: non-zero exit, one ``Error:`` paragraph naming ``phrases``."""
    out = res.stdout + res.stderr if isinstance(res, subprocess.CompletedProcess) else res.output
    rc = res.returncode if isinstance(res, subprocess.CompletedProcess) else res.exit_code
    assert rc != 0, out
    if code is not None:
        assert rc == code, out
    assert "Traceback" not in out and "This is a bug" not in out, out
    err = flat(res.stderr)
    assert err.startswith("Error:"), err
    for p in phrases:
        assert p in err, (p, err)
    return err


def visible(models: Path) -> list[str]:
    """Model folders (hidden bookkeeping folders are not models)."""
    return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))


def write_registry(ws: Workspace, text: str) -> None:
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    ws.registry_path.write_text(text)


def entry_json(name: str, **fields: object) -> dict:
    base = {"model_name": name, "source": "local", "architecture": "qwen2", "local_path": name}
    return {**base, **fields}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with the 4-step from-scratch run ``scratch`` (checkpoint step-000004)."""
    base = tmp_path_factory.mktemp("store-trained")
    home = base / "ws"
    home.mkdir()
    data = small_corpus(base / "c.txt", chars=8000)
    cfg = write_config(base / "scratch.yaml", data_path=str(data), max_steps=4)
    res = llmforge(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def run_ws(trained: Path, tmp_path: Path) -> Workspace:
    """A private copy of the ``trained`` workspace (its config at ``../scratch.yaml``)."""
    shutil.copy(trained / "scratch.yaml", tmp_path / "scratch.yaml")
    shutil.copy(trained / "c.txt", tmp_path / "c.txt")
    shutil.copytree(trained / "ws", tmp_path / "ws")
    return Workspace(root=(tmp_path / "ws").resolve())


# -- 1. an entry's folder is models/<its own name>; reserved names are refused everywhere -------
@pytest.mark.parametrize("local_path", ["registry.json", ".cache", ".staging", "keep", "."])
def test_an_entry_pointing_at_the_workspace_files_is_refused_not_deleted(
    workspace: Workspace, local_path: str
) -> None:
    make_model(workspace, "keep")
    (workspace.models_dir / ".cache" / "blobs").mkdir(parents=True)
    (workspace.models_dir / ".cache" / "blobs" / "abc").write_bytes(b"blob")
    (workspace.models_dir / ".staging").mkdir()
    data = json.loads(workspace.registry_path.read_text())
    data["models"]["evil"] = entry_json("evil", local_path=local_path)
    workspace.registry_path.write_text(json.dumps(data))
    before = snapshot(workspace.root)
    for args in (("delete", "evil", "--yes"), ("validate", "evil"), ("info", "evil")):
        res = llmforge(workspace.root, "models", *args)
        refused(res, "models.evil", "local_path must be the model's own name 'evil'", code=3)
        assert snapshot(workspace.root) == before  # registry.json and the cache are intact


RESERVED = ["registry.json", "readme.md", "registry.lock", "x.tmp", "y.incomplete"]


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_names_are_refused_by_import_before_anything_is_written(
    workspace: Workspace, tiny_qwen_repo: Path, name: str
) -> None:
    make_model(workspace, "keep")
    before = snapshot(workspace.root)
    res = llmforge(
        workspace.root, "models", "import", str(tiny_qwen_repo), "--name", name, "--accept-license"
    )
    refused(res, "is not a valid model name", "reserved", code=2)
    assert snapshot(workspace.root) == before


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_names_are_refused_by_register_and_init_from(run_ws: Workspace, name: str) -> None:
    cfg = str(run_ws.root.parent / "scratch.yaml")
    before = snapshot(run_ws.root)
    for args in (
        ("ckpt", "register", "scratch", "--name", name),
        ("train", cfg, "--init-from", "scratch", "--name", name),
        ("train", cfg, "--init-from", "scratch", "--name", name, "--run-name", "branch"),
    ):
        res = llmforge(run_ws.root, *args)
        refused(res, "is not a valid model name", "reserved", code=2)
        assert snapshot(run_ws.root) == before, args


# -- 2. delete is all-or-nothing under the lock; a kill anywhere leaves nothing behind ---------
MODEL_FILES = {f"w{i}.bin": bytes([i]) * 100 for i in range(4)}


def _settled(ws: Workspace) -> None:
    """The next command that takes the registry lock settles what a kill left."""
    res = llmforge(ws.root, "models", "validate")
    assert res.exit_code == 0, res.output
    assert not (ws.models_dir / ".trash").exists()
    assert not (ws.models_dir / ".staging").exists() or not any(
        (ws.models_dir / ".staging").iterdir()
    )


@pytest.mark.parametrize(
    ("event", "arg", "needle", "survives"),
    [
        ("os.rename", 0, "models/victim", True),  # about to move the folder aside
        ("os.rename", 1, "registry.json", True),  # folder moved aside, registry not yet written
        ("shutil.rmtree", 0, "victim", False),  # committed, the folder not yet deleted
        ("os.remove", 0, "w2.bin", False),  # committed, half the folder deleted
    ],
)
def test_a_kill_at_any_step_of_delete_leaves_the_model_whole_or_gone(
    workspace: Workspace, event: str, arg: int, needle: str, survives: bool
) -> None:
    make_model(workspace, "keep")
    make_model(workspace, "victim", files=MODEL_FILES)
    res = killed_at(workspace.root, event, arg, needle, "models", "delete", "victim", "--yes")
    assert res.returncode == -9, res.stdout + res.stderr  # the kill point was reached
    _settled(workspace)
    assert ModelRegistry(workspace).names() == (["keep", "victim"] if survives else ["keep"])
    assert visible(workspace.models_dir) == ModelRegistry(workspace).names()


def test_a_kill_before_the_registry_write_of_an_import_force_keeps_the_old_model(
    workspace: Workspace, tiny_qwen_repo: Path
) -> None:
    old = make_model(workspace, "m", files=MODEL_FILES)
    args = ("models", "import", str(tiny_qwen_repo), "--name", "m", "--force", "--accept-license")
    res = killed_at(workspace.root, "os.rename", 1, "registry.json", *args)
    assert res.returncode == -9, res.stdout + res.stderr
    _settled(workspace)  # the old folder is back under its entry, the new one discarded
    assert ModelRegistry(workspace).get("m").files == old.files
    assert visible(workspace.models_dir) == ["m"]


@pytest.mark.parametrize(
    ("event", "arg", "needle", "registered"),
    [
        ("os.rename", 1, "registry.json", False),  # new folder in place, entry not written
        ("shutil.rmtree", 0, ".trash", True),  # committed, the replaced folder not yet deleted
    ],
)
def test_a_kill_during_ckpt_register_leaves_no_unregistered_folder(
    run_ws: Workspace, event: str, arg: int, needle: str, registered: bool
) -> None:
    make_model(run_ws, "reg", files=MODEL_FILES)  # replaced with --force
    args = ("ckpt", "register", "scratch", "--name", "reg", "--force")
    res = killed_at(run_ws.root, event, arg, needle, *args)
    assert res.returncode == -9, res.stdout + res.stderr
    _settled(run_ws)
    entry = ModelRegistry(run_ws).get("reg")
    assert (entry.source == "fine-tune") is registered
    assert visible(run_ws.models_dir) == ["reg"]


def test_delete_racing_an_import_force_of_the_same_name_keeps_the_new_model(
    workspace: Workspace, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    imp = ("models", "import", str(tiny_qwen_repo), "--name", "m", "--accept-license")
    assert llmforge(workspace.root, *imp).exit_code == 0
    marker, go = tmp_path / "paused", tmp_path / "go"
    cmd = [sys.executable, "-c", PAUSER, str(marker), str(go), "--home", str(workspace.root)]
    delete = subprocess.Popen(
        [*cmd, "models", "delete", "m", "--yes"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(6000):  # the delete released the lock and is about to remove files
            if marker.exists() or delete.poll() is not None:
                break
            time.sleep(0.01)
        assert marker.exists(), delete.communicate()
        res = llmforge(workspace.root, *imp, "--force")
        assert res.exit_code == 0, res.output
    finally:
        go.touch()
        out, err = delete.communicate(timeout=60)
    assert delete.returncode == 0, out + err
    assert ModelRegistry(workspace).names() == ["m"]
    res = llmforge(workspace.root, "models", "validate", "m")
    assert res.exit_code == 0, res.output  # the import's folder was not deleted under it


# -- 4. a registry.json with a name twice is corrupt, never rewritten -------------------------
def test_a_duplicated_name_in_the_registry_is_refused_and_never_overwritten(
    workspace: Workspace, tiny_qwen_repo: Path
) -> None:
    make_model(workspace, "m")
    make_model(workspace, "n")
    text = workspace.registry_path.read_text()
    one = json.dumps(json.loads(text)["models"]["m"])
    # the same name twice, as a merge conflict resolved by hand can leave it
    write_registry(workspace, text.replace('"models": {', f'"models": {{"m": {one},', 1))
    before = snapshot(workspace.root)
    for args in (
        ("models", "list"),
        ("models", "delete", "n", "--yes"),
        ("models", "import", str(tiny_qwen_repo), "--name", "x", "--accept-license"),
        ("models", "validate"),
    ):
        res = llmforge(workspace.root, *args)
        refused(res, "names the model 'm' twice", "delete the other", code=3)
        assert snapshot(workspace.root) == before, args


def test_a_duplicated_key_inside_an_entry_is_refused(workspace: Workspace) -> None:
    write_registry(
        workspace,
        '{"schema_version": 1, "models": {"m": {"model_name": "m", "source": "local", '
        '"architecture": "qwen2", "local_path": "m", "local_path": "../../etc"}}}',
    )
    refused(llmforge(workspace.root, "models", "list"), "the key 'local_path' twice", code=3)


# -- 5. deleting what adapters and checkpoints need: say so, list them, ask for --force ------
@pytest.fixture(scope="module")
def family(trained: Path) -> Path:
    """``cbase`` registered from ``scratch``; a LoRA run ``lr`` on it, the adapter model
    ``adapter`` registered from that run, and a full fine-tune run ``fr`` of it."""
    home = trained.parent / "family"
    subprocess.run(["cp", "-a", str(trained), str(home)], check=True)  # keeps hard links
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


# -- 6. odd filesystems: a lock that is a folder, models or runs that are files, long names,
#       a full disk while the registry is written ---------------------------------------------
def test_a_registry_lock_that_is_a_folder_is_a_clear_error(
    workspace: Workspace, tiny_qwen_repo: Path
) -> None:
    make_model(workspace, "m")
    (workspace.models_dir / ".registry.lock").unlink(missing_ok=True)
    (workspace.models_dir / ".registry.lock").mkdir()
    before = snapshot(workspace.root)
    for args in (
        ("models", "delete", "m", "--yes"),
        ("models", "import", str(tiny_qwen_repo), "--name", "x", "--accept-license"),
    ):
        res = llmforge(workspace.root, *args)
        refused(res, ".registry.lock is a folder", "nothing was changed", "remove it", code=1)
        assert snapshot(workspace.root) == before, args


@pytest.mark.parametrize(
    "args",
    [
        ("models", "list"),
        ("models", "list", "--json"),
        ("models", "info", "m"),
        ("models", "delete", "m", "--yes"),
        ("models", "validate"),
        ("models", "import", "{repo}", "--name", "x", "--accept-license"),
    ],
)
def test_models_that_is_a_file_is_a_clear_error(
    workspace: Workspace, tiny_qwen_repo: Path, args: tuple[str, ...]
) -> None:
    workspace.models_dir.write_text("not a folder")
    before = snapshot(workspace.root)
    res = llmforge(workspace.root, *(a.format(repo=tiny_qwen_repo) for a in args))
    refused(res, "models is a file, not a folder", "Move or rename that file")
    assert snapshot(workspace.root) == before


def test_runs_that_is_a_file(workspace: Workspace) -> None:
    make_model(workspace, "m")
    workspace.runs_dir.write_text("not a folder")
    assert llmforge(workspace.root, "models", "list").exit_code == 0
    before = snapshot(workspace.root)
    refused(llmforge(workspace.root, "ckpt", "list"), "runs is a file, not a folder")
    assert snapshot(workspace.root) == before
    res = llmforge(workspace.root, "models", "delete", "m", "--yes")  # no run can need it
    assert res.exit_code == 0, res.output


LONG = "a" * 5000


@pytest.mark.parametrize(
    "args",
    [
        ("info", LONG),
        ("info", LONG, "--json"),
        ("delete", LONG, "--yes"),
        ("validate", LONG),
        ("import", "{repo}", "--name", LONG, "--accept-license"),
    ],
)
def test_a_5000_character_name_is_a_short_clear_error(
    workspace: Workspace, tiny_qwen_repo: Path, args: tuple[str, ...]
) -> None:
    make_model(workspace, "m")
    before = snapshot(workspace.root)
    res = llmforge(workspace.root, "models", *(a.format(repo=tiny_qwen_repo) for a in args))
    err = refused(res, "5,000")
    assert len(err) < 600, err  # the name is shown cut short, not 5,000 characters of it
    assert snapshot(workspace.root) == before


def _under_file_size_limit(home: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
    def apply() -> None:  # in the child: a write past the limit fails with EFBIG
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "llmforge", "--home", str(home), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=_env(), preexec_fn=apply
    )


def test_a_full_disk_while_the_registry_is_written_changes_nothing(run_ws: Workspace) -> None:
    # A registry bigger than the file-size limit: every other file these commands write
    # (the journal, hard links) is smaller, so the registry write is what fails.
    for i in range(60):
        make_model(run_ws, f"m{i:02d}", files=MODEL_FILES)
    assert run_ws.registry_path.stat().st_size > 40_000
    before = snapshot(run_ws.root)
    for args in (
        ("models", "delete", "m07", "--yes"),
        ("ckpt", "register", "scratch", "--name", "new"),
        ("ckpt", "register", "scratch", "--name", "m08", "--force"),
    ):
        res = _under_file_size_limit(run_ws.root, 20_000, *args)
        refused(res, "Could not write", "registry.json", "File too large", "unchanged", code=1)
        assert snapshot(run_ws.root) == before, args


# -- 7. markup and escape sequences in registry fields never reach the terminal -------------
def test_markup_and_escapes_in_registry_fields_are_shown_inert(workspace: Workspace) -> None:
    hostile = entry_json(
        "m",
        model_id="\x1b[31mOrg/Red\x1b[0m",
        license="[/] [bold]MIT[/bold] \x9b2J",
        tokenizer="tok\x1b]0;pwned\x07",
        fine_tuned_from="base",
        details={"note\x1b[2J": "[link=file:///etc]x[/link] \u202eevil", "[/]": "[red]"},
        files={"w\x1b[2J.bin": {"size": 1, "sha256": "0" * 64}},
    )
    write_registry(workspace, json.dumps({"schema_version": 1, "models": {"m": hostile}}))
    (workspace.models_dir / "m").mkdir()  # validate then names the missing file
    outputs = []
    for args in (
        ("info", "m"),
        ("info", "m", "--json"),
        ("list",),
        ("list", "--json"),
        ("validate", "m"),
        ("validate", "m", "--json"),
        ("delete", "m", "--yes"),
    ):
        res = llmforge(workspace.root, "models", *args)
        assert "Traceback" not in res.output and "This is a bug" not in res.output, res.output
        assert res.exit_code == (3 if args[0] == "validate" else 0), res.output
        outputs.append(res.output)
    for out in outputs:
        for bad in ("\x1b", "\x9b", "\x07", "\u202e"):
            assert bad not in out, (bad, out)
    assert "[/] [bold]MIT[/bold]" in outputs[0]  # shown as written, not read as markup
    assert "w.bin is missing" in outputs[4]  # the escape sequence removed, the name shown
    assert json.loads(outputs[1])["license"].startswith("[/] [bold]MIT[/bold]")


# -- 3. shared files are read-only; checkpoints carry a manifest that every command checks ---
def _writable(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o222)


def test_files_shared_by_hard_link_are_read_only_and_everything_still_works(
    run_ws: Workspace, tiny_qwen_repo: Path
) -> None:
    imp = ("models", "import", str(tiny_qwen_repo), "--accept-license", "--name")
    for name in ("a", "b"):  # b shares a's blobs
        assert llmforge(run_ws.root, *imp, name).exit_code == 0
    assert llmforge(run_ws.root, "ckpt", "register", "scratch", "--name", "c").exit_code == 0
    models = run_ws.models_dir
    shared = [p for p in models.rglob("*") if p.is_file() and not p.is_symlink()]
    shared = [p for p in shared if p.parent.name != ".cache" and not p.name.endswith(".lock")]
    assert len([p for p in shared if "blobs" in p.parts]) >= 7
    ckpt = run_ws.runs_dir / "scratch/checkpoints/step-000004"
    linked = [p for p in ckpt.rglob("*") if p.is_file() and p.stat().st_nlink > 1]
    assert {p.name for p in linked} >= {"model.safetensors", "config.json"}
    writable = [p for p in shared + linked if _writable(p) and p.name != "registry.json"]
    writable = [p for p in writable if p.name != "README.md" or p.parent != models]
    assert writable == [], writable  # `>>` on any name of a shared file would change them all
    assert _writable(run_ws.registry_path)
    # Replacing, deleting and pruning work on read-only files.
    assert llmforge(run_ws.root, *imp, "a", "--force").exit_code == 0
    for name in ("a", "b", "c"):
        res = llmforge(run_ws.root, "models", "delete", name, "--yes")
        assert res.exit_code == 0, res.output
    assert not [p for p in (models / ".cache" / "blobs").iterdir()]  # every blob pruned
    from llmforge.training.checkpoint import prune_checkpoints

    shutil.copytree(ckpt, ckpt.with_name("step-000008"))  # a newer one, so step-4 is pruned
    assert prune_checkpoints(run_ws.runs_dir / "scratch", keep_last=1) == [ckpt]
    assert not ckpt.exists()


def test_every_checkpoint_lists_its_files_with_size_and_sha256(run_ws: Workspace) -> None:
    import hashlib

    ckpt = run_ws.runs_dir / "scratch/checkpoints/step-000004"
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
    run_ws: Workspace, damage, rel: str, noticed_by: tuple[str, ...]
) -> None:
    ckpt = run_ws.runs_dir / "scratch/checkpoints/step-000004"
    damage(ckpt / rel)
    shown = "model.safetensors.index.json" if damage is _add_file else rel
    before = snapshot(run_ws.root)
    for what, args in _checkpoint_commands(run_ws).items():
        if what not in noticed_by:
            continue
        res = llmforge(run_ws.root, *args)
        err = refused(res, "step-000004", code=3)
        if what == "validate":  # the report on stdout names the file, stderr sums up
            assert "failed validation" in err and shown in flat(res.stdout), res.output
        else:
            assert "is damaged or was changed after it was saved" in err and shown in err, err
        assert snapshot(run_ws.root) == before, what


def test_a_checkpoint_saved_before_manifests_loads_unverified(run_ws: Workspace) -> None:
    ckpt = run_ws.runs_dir / "scratch/checkpoints/step-000004"
    (ckpt / "manifest.json").unlink()
    cmds = _checkpoint_commands(run_ws)
    res = llmforge(run_ws.root, *cmds["info"])
    assert res.exit_code == 0, res.output
    assert "unverified: saved before checkpoints had a manifest" in flat(res.stdout)
    res = llmforge(run_ws.root, *cmds["validate"])
    assert res.exit_code == 0, res.output
    assert "-- runs/scratch/checkpoints/step-000004 (unverified" in flat(res.stdout)
    for what in ("generate", "register", "export", "resume"):
        res = llmforge(run_ws.root, *cmds[what])
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
