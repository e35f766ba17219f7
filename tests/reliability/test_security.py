"""Security: no code runs on load, tokens stay secret, nothing escapes the workspace."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import torch
from typer.testing import CliRunner

from helpers import snapshot
from hubserver import LocalHub
from llmforge.checkpoints.loading import load_optimizer_state
from llmforge.cli import app
from train_helpers import run_cli, small_corpus, write_config

SRC = Path(__file__).resolve().parents[2] / "src" / "llmforge"
MARKER = Path("/tmp/llmforge-security-marker")


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for f in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                if called == name:
                    found.append((f, node))
    return found


def test_every_torch_load_is_weights_only_and_no_remote_code() -> None:
    loads = _calls("load")
    torch_loads = [(f, c) for f, c in loads if ast.unparse(c.func).startswith("torch.")]
    assert torch_loads, "expected torch.load calls to check"
    for f, call in torch_loads:
        kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert kw.get("weights_only") == "True", f"{f}: {ast.unparse(call)}"
    for f in SRC.rglob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert ast.unparse(node.value) == "False", f"{f}: trust_remote_code enabled"


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    torch.save({"state": Evil()}, tmp_path / "optimizer.pt")
    try:
        load_optimizer_state(tmp_path)
    except Exception as e:  # the typed CheckpointError
        assert "tensors-only" in str(e)
    else:
        raise AssertionError("a malicious pickle was loaded")
    assert not MARKER.exists()


def test_token_never_reaches_disk_or_output(
    tmp_path: Path, hub: LocalHub, tiny_qwen_repo: Path
) -> None:
    token = "hf_SeCrEtToKeN1234567890"
    hub.add_repo("Qwen/Private", tiny_qwen_repo, gated=True, tokens={token})
    home = tmp_path / "ws"
    home.mkdir()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    outputs = []
    bad = CliRunner().invoke(
        app,
        [
            "--home",
            str(home),
            "models",
            "import",
            "Qwen/Private",
            "--token",
            "hf_wrong_token_999",
            "--accept-license",
        ],
        env=env,
    )
    assert bad.exit_code != 0 and "gated" in bad.stderr
    outputs.append(bad.output + bad.stderr)
    ok = CliRunner().invoke(
        app,
        [
            "--home",
            str(home),
            "models",
            "import",
            "Qwen/Private",
            "--name",
            "private",
            "--accept-license",
        ],
        env={**env, "HF_TOKEN": token},
    )
    assert ok.exit_code == 0, ok.output
    outputs.append(ok.output + ok.stderr)
    cfg = write_config(
        tmp_path / "p.yaml",
        model_name="private",
        max_steps=2,
        warmup_steps=0,
        data_path=str(small_corpus(tmp_path / "c.txt")),
    )
    trained = run_cli(home, "train", str(cfg))
    assert trained.exit_code == 0, trained.output
    for text in outputs:
        assert token not in text and "hf_wrong_token_999" not in text
    for f in home.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert token.encode() not in data, f
            assert b"hf_wrong_token_999" not in data, f


def _register_outside(home: Path, outside: Path, local_path: str) -> None:
    models = home / "models"
    models.mkdir(exist_ok=True)
    entry = {
        "model_name": "evil",
        "source": "local",
        "architecture": "qwen2",
        "local_path": local_path,
        "files": {"secret.txt": {"size": 6, "sha256": "0" * 64}},
    }
    (models / "registry.json").write_text(
        json.dumps({"schema_version": 1, "models": {"evil": entry}})
    )


def test_symlinked_model_folder_pointing_outside_is_never_followed(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (home / "models").mkdir()
    (home / "models" / "evil").symlink_to(outside, target_is_directory=True)
    _register_outside(home, outside, "evil")
    before = snapshot(outside)
    val = run_cli(home, "models", "validate", "evil")
    assert val.exit_code != 0 and "outside" in val.stdout + val.stderr
    res = run_cli(home, "train", str(write_config(tmp_path / "e.yaml", model_name="evil")))
    assert res.exit_code != 0 and "Traceback" not in res.output
    dele = run_cli(home, "models", "delete", "evil", "--yes")
    assert "Traceback" not in dele.output
    assert snapshot(outside) == before  # nothing outside was read into a model or deleted


def test_symlinked_file_inside_a_model_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    folder = home / "models" / "evil"
    folder.mkdir(parents=True)
    (folder / "secret.txt").symlink_to(outside / "secret.txt")
    _register_outside(home, outside, "evil")
    val = run_cli(home, "models", "validate", "evil")
    assert val.exit_code != 0
    assert "outside" in val.stdout + val.stderr
    assert (outside / "secret.txt").read_text() == "secret"
