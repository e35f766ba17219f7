"""The blob store, staging cleanup and pickled-weights conversion, without a hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llmforge.importing.pickled_weights import convert_pickled
from llmforge.store import blobs as store
from llmforge.store.safetensors_header import count_parameters
from llmforge.workspace import Workspace


def test_staging_of_a_dead_import_is_cleaned_a_live_one_kept(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    live = store.new_staging_dir(ws, "a")  # owned by this (running) process
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dead = live.with_name(f"b.{dead_pid}.xyz")
    dead.mkdir()
    (dead / "f").write_text("x")
    legacy = live.with_name("c.nopid")  # no PID in the name: cleaned once a day old
    legacy.mkdir()
    past = time.time() - store.STALE_STAGING_S - 10
    os.utime(legacy, (past, past))
    fresh = store.new_staging_dir(ws, "d")
    assert live.exists() and fresh.exists()
    assert not dead.exists() and not legacy.exists()


def test_adopt_shares_and_prune_frees(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    src = tmp_path / "w.bin"
    src.write_bytes(b"x" * 1000)
    (ws.models_dir / "m1").mkdir(parents=True)
    (ws.models_dir / "m2").mkdir()
    d1 = store.adopt(ws, src, ws.models_dir / "m1" / "w")
    d2 = store.adopt(ws, src, ws.models_dir / "m2" / "w")
    assert d1 == d2 and (ws.models_dir / "m2" / "w").stat().st_nlink == 3
    assert store.unshared_bytes(ws.models_dir / "m1") == 0
    (ws.models_dir / "m1" / "w").unlink()
    assert store.prune_cache(ws) == 0
    (ws.models_dir / "m2" / "w").unlink()
    assert store.prune_cache(ws) == 1000


def test_convert_sharded_checkpoint(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(4)
    torch.save({"a": a, "a_tied": a}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": b}, tmp_path / "pytorch_model-00002-of-00002.bin")
    index = {
        "metadata": {"total_size": 40},
        "weight_map": {
            "a": "pytorch_model-00001-of-00002.bin",
            "a_tied": "pytorch_model-00001-of-00002.bin",
            "b": "pytorch_model-00002-of-00002.bin",
        },
    }
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    out.mkdir()
    sources = {p.name: p for p in tmp_path.iterdir() if p.is_file()}
    written = convert_pickled(sources, out)
    assert sorted(written) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    first = load_file(out / "model-00001-of-00002.safetensors")
    assert torch.equal(first["a"], a) and torch.equal(first["a_tied"], a)
    new_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert new_index["weight_map"]["b"] == "model-00002-of-00002.safetensors"
    shards = [out / n for n in written if n.endswith(".safetensors")]
    assert count_parameters(shards) == 6 + 6 + 4


def test_abandoned_partial_download_is_deleted_unless_in_use(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    blobs = store.hub_cache_dir(ws) / "models--org--m" / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / "abc123.deadbeef.incomplete"
    partial.write_bytes(b"x" * 100)
    lock = store.hub_cache_dir(ws) / ".locks" / "models--org--m" / "abc123.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
            "l.acquire(); print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert store.prune_cache(ws) == 0  # a live download: kept
        assert partial.exists()
    finally:
        holder.kill()
        holder.wait()
    assert store.prune_cache(ws) == 100  # its process is gone: deleted
    assert not partial.exists()
