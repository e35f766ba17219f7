"""Bad GGUF exports: one clear paragraph, a non-zero exit, and the workspace byte-identical.

Each refusal is checked through the real command, on a copy of the shared workspace that
also holds a from-scratch (custom-transformer) run and two imported Qwen2 models llama.cpp's
qwen2 would run differently (sliding-window attention, linear RoPE scaling).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_unchanged, flat, snapshot
from tiny_models import build_tiny_model
from train_helpers import run_cli, small_corpus, write_config


@pytest.fixture(scope="module")
def ws(gguf_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refusals")
    ws = root / "ws"
    shutil.copytree(gguf_ws, ws, symlinks=True)
    cfg = write_config(root / "scratch.yaml", data_path=str(small_corpus(root / "c.txt", 3000)))
    res = run_cli(ws, "train", str(cfg), "--run-name", "scratch", "--max-steps", "4")
    assert res.exit_code == 0, res.output
    for name, change in {
        "sliding": {"use_sliding_window": True, "sliding_window": 16},
        "scaled": {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
    }.items():
        repo = build_tiny_model(root / name, "qwen2", seed=2)
        config = json.loads((repo / "config.json").read_text()) | change
        (repo / "config.json").write_text(json.dumps(config))
        res = run_cli(ws, "models", "import", str(repo), "--name", name, "--accept-license")
        assert res.exit_code == 0, res.output
    return ws


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("scratch", "--format", "gguf"), 1, "llama.cpp has no architecture that runs it"),
        (("sliding", "--format", "gguf"), 1, "sliding-window attention"),
        (("scaled", "--format", "gguf"), 1, "'linear' RoPE scaling"),
        (("chat", "--format", "gguf", "--dtype", "q3"), 1, "--dtype 'q3' is not a GGUF type"),
        (("chat", "--dtype", "f16"), 2, "--dtype only apply to --format gguf"),
        (("chat", "--format", "onnx"), 2, "is not an export format"),
        (("chat", "--format", "gguf", "--adapter"), 1, "holds full weights"),
        (("chat", "--format", "gguf", "--with-base"), 1, "--with-base goes with --adapter"),
        (("lora", "--format", "gguf", "--adapter", "--merge"), 2, "contradict"),
        (("no-such", "--format", "gguf"), 1, "neither a checkpoint nor a registered model"),
    ],
)
def test_refused_with_one_paragraph(ws, tmp_path, args, code, needle):
    before = snapshot(ws)
    dest = tmp_path / "out"
    res = run_cli(ws, "ckpt", "export", args[0], str(dest), *args[1:])
    assert res.exit_code == code, res.output
    err = flat(res.stderr)
    assert needle in err and err.startswith("Error:") and "Traceback" not in res.output
    assert err.count("Error:") == 1 and not dest.exists()
    assert_unchanged(ws, before)


def test_destination_refusals(ws, tmp_path):
    before = snapshot(ws)
    res = run_cli(ws, "ckpt", "export", "chat", str(ws / "models" / "x"), "--format", "gguf")
    assert res.exit_code == 1 and "overlaps the workspace's models/" in flat(res.stderr)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    res = run_cli(ws, "ckpt", "export", "tiny-qwen3", str(full), "--format", "gguf")
    assert res.exit_code == 1 and "is not empty" in flat(res.stderr)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert_unchanged(ws, before)


def _limited(limit: int):
    def apply() -> None:  # in the child: a write past `limit` bytes fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_leaves_nothing(ws, tmp_path):
    before = snapshot(ws)
    dest = tmp_path / "out" / "deep" / "chat"
    env = {k: v for k, v in os.environ.items() if k not in ("LLMFORGE_HOME", "LLMFORGE_DEBUG")}
    cmd = [sys.executable, "-m", "llmforge", "--home", str(ws), "ckpt", "export", "chat"]
    res = subprocess.run(
        [*cmd, str(dest), "--format", "gguf"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env | {"HF_HUB_OFFLINE": "1"},
        preexec_fn=_limited(60_000),  # the f16 file is ~200 KB
    )
    assert res.returncode == 1, res.stderr
    err = flat(res.stderr)
    assert f"Could not write the export to {dest}: File too large" in err
    assert "is the disk full" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # not even the parents it made
    assert_unchanged(ws, before)
