"""The blob store, staging cleanup and pickled-weights conversion, without a hub."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from llmforge import store
from llmforge.weights import convert_pickled, count_parameters
from llmforge.workspace import Workspace


def test_stale_staging_is_cleaned(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    old = store.new_staging_dir(ws, "a")
    (old / "f").write_text("x")
    past = time.time() - store.STALE_STAGING_S - 10
    os.utime(old, (past, past))
    fresh = store.new_staging_dir(ws, "b")
    assert not old.exists() and fresh.exists()


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
