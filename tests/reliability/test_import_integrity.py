"""`models import` refuses what would fail later, and says what happened in plain words.

A full disk, a safetensors header that does not describe its file, a config.json whose sizes
do not fit the weights, a pickle that would run code, a repository that moves on while it is
being imported, a name that is taken: each is one clear paragraph at import time, and a
refusal leaves the workspace byte-identical. Everything runs the real import, against the
local hub (tests/hubserver.py) or a folder.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import flat, make_model, snapshot
from hub_helpers import file_size_limit, llmforge_proc, proc_env, variant
from hubserver import LocalHub
from llmforge.checkpoints.loading import load_optimizer_state
from llmforge.errors import CheckpointError, UnsafeWeightsError
from llmforge.importing.model_check import expected_tensors
from llmforge.importing.pickled_weights import convert_pickled
from llmforge.store.safetensors_header import safetensors_problem


# -- a full disk ----------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["folder", "hub"])
def test_disk_full_during_import_is_clear_and_leaves_nothing(
    base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path, source: str
) -> None:
    hub_env.add_repo("Full/tiny", tiny_qwen_repo)
    before = snapshot(base_ws.root)
    src = str(tiny_qwen_repo) if source == "folder" else "Full/tiny"
    weights = (tiny_qwen_repo / "model.safetensors").stat().st_size
    proc = llmforge_proc(
        base_ws.root,
        *("models", "import", src, "--name", "full", "--accept-license"),
        env=proc_env(hub_env, tmp_path),
        preexec_fn=file_size_limit(weights // 4),  # every write past this fails with EFBIG
    )
    assert proc.returncode == 1, proc.stderr
    assert "The disk ran out of space while importing 'full' (File too large)" in flat(proc.stderr)
    assert "Traceback" not in proc.stderr and "Unexpected error" not in proc.stderr
    assert snapshot(base_ws.root) == before  # no partial download, copy or staging folder


# -- safetensors headers --------------------------------------------------------------------------
def _st_file(path: Path) -> Path:
    save_file(
        {
            "a": torch.zeros(2, 3),
            "b": torch.ones(4, dtype=torch.bfloat16),
            "empty": torch.zeros(0, 5),
            "scalar": torch.tensor(1, dtype=torch.int64),
            "flag": torch.tensor([True, False]),
        },
        str(path),
        metadata={"format": "pt"},
    )
    return path


def _rewrite(path: Path, change, tail: bytes = b"", cut: int = 0) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    raw = change(header) if change else json.dumps(header).encode()
    if isinstance(raw, dict):
        raw = json.dumps(raw).encode()
    body = data[8 + n :]
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body[: len(body) - cut] + tail)


def _set(name: str, key: str, value):
    def change(h):
        h[name][key] = value
        return h

    return change


MUTATIONS = {
    "valid": (None, b"", 0),
    "negative-dim": (_set("a", "shape", [-2, -3]), b"", 0),
    "float-dim": (_set("a", "shape", [2.0, 3]), b"", 0),
    "bool-dim": (_set("a", "shape", [True, 6]), b"", 0),
    "string-dim": (_set("a", "shape", ["2", 3]), b"", 0),
    "other-shape": (_set("a", "shape", [3, 3]), b"", 0),
    "same-size-shape": (_set("a", "shape", [3, 2]), b"", 0),
    "unknown-dtype": (_set("a", "dtype", "Q4_K"), b"", 0),
    "other-dtype": (_set("a", "dtype", "F16"), b"", 0),
    "offsets-not-list": (_set("a", "data_offsets", 7), b"", 0),
    "overlap": (_set("b", "data_offsets", [0, 8]), b"", 0),
    "trailing-bytes": (None, b"\0" * 8, 0),
    "truncated": (None, b"", 4),
    "not-json": (lambda h: b"{not json", b"", 0),
    "not-object": (lambda h: b"[1, 2]", b"", 0),
    "metadata-not-text": (lambda h: {**h, "__metadata__": {"format": 1}}, b"", 0),
    "entry-not-object": (lambda h: {**h, "a": [1]}, b"", 0),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_header_check_agrees_with_safetensors(tmp_path: Path, case: str) -> None:
    path = _st_file(tmp_path / "w.safetensors")
    change, tail, cut = MUTATIONS[case]
    _rewrite(path, change, tail, cut)
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                f.get_tensor(k)
        theirs = None
    except Exception as e:  # the real consumer's verdict
        theirs = e
    mine = safetensors_problem(path)
    assert (mine is None) == (theirs is None), (case, mine, theirs)
    assert (mine is None) == (case in ("valid", "same-size-shape"))


def test_header_length_beyond_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    assert "does not fit the file" in str(safetensors_problem(path))


def _bad_header_repo(base: Path, dest: Path) -> Path:
    repo = variant(base, dest)
    name = "model.embed_tokens.weight"
    _rewrite(repo / "model.safetensors", _set(name, "shape", [-1, 64]))
    return repo


@pytest.mark.parametrize("source", ["folder", "hub"])
def test_import_refuses_a_malformed_safetensors_header(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path, source: str
) -> None:
    repo = _bad_header_repo(tiny_qwen_repo, tmp_path / "bad")
    hub_env.add_repo("Bad/header", repo)
    before = snapshot(base_ws.root)
    res = cli("models", "import", str(repo) if source == "folder" else "Bad/header",
              "--name", "bad", "--accept-license")  # fmt: skip
    assert res.exit_code == 3, res.output
    text = flat(res.output)
    assert "model.safetensors is not a valid safetensors file" in text
    assert "model.embed_tokens.weight" in text and "[-1, 64]" in text
    assert snapshot(base_ws.root) == before


def test_validate_fails_a_registered_model_with_a_malformed_header(
    cli, workspace, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    repo = _bad_header_repo(tiny_qwen_repo, tmp_path / "bad")
    files = {p.name: p.read_bytes() for p in repo.iterdir()}
    make_model(workspace, "old-import", files=files, architecture="qwen2")  # recorded as-is
    res = cli("models", "validate", "old-import")
    assert res.exit_code != 0, res.output
    assert "not a valid safetensors file" in flat(res.output)


# -- config.json against the weights --------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            {"intermediate_size": 96},
            "model.layers.0.mlp.gate_proj.weight in model.safetensors has shape [128, 64], "
            "but config.json implies [96, 64]",
        ),
        ({"vocab_size": 500}, "model.embed_tokens.weight"),
        ({"num_hidden_layers": 3}, "have no tensor model.layers.2.input_layernorm.weight"),
        ({"num_hidden_layers": 1}, "a layer beyond the 1 that its config.json"),
        ({"num_key_value_heads": 4}, "self_attn.k_proj.weight"),
    ],
)
def test_config_that_does_not_fit_the_weights_is_refused(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path, change, said
) -> None:
    repo = variant(tiny_qwen_repo, tmp_path / "mismatch", config=change)
    hub_env.add_repo("Bad/config", repo)
    before = snapshot(base_ws.root)
    for source in ("Bad/config", str(repo)):
        res = cli("models", "import", source, "--name", "mismatch", "--accept-license")
        assert res.exit_code == 3, res.output
        assert said in flat(res.output), res.output
        assert "look at the above report" not in res.output
        assert snapshot(base_ws.root) == before


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "qwen2", "tie_word_embeddings": True},
        {"model_type": "qwen2", "tie_word_embeddings": False, "num_key_value_heads": 1},
        {"model_type": "qwen3", "head_dim": 8, "tie_word_embeddings": True},
        {"model_type": "qwen3", "head_dim": 24, "attention_bias": True},
    ],
)
def test_expected_tensors_are_what_transformers_builds(config: dict) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
    }
    cfg = AutoConfig.for_model(**(sizes | config))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    required, optional = expected_tensors(cfg.to_dict())
    assert {k: v for k, v in built.items() if k not in optional} == {
        k: v for k, v in required.items() if k not in optional
    }
    assert set(built) <= set(required)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"[1, 2]", "is not a JSON object (it holds a list)"),
        (b"[" * 100_000 + b"]" * 100_000, "is nested too deeply"),
        (b'{"model_type": "qwen2", "x": ' + b"9" * 5000 + b"}", "is not valid JSON"),
        (b"\xff\xfe{}", "is not valid JSON"),
    ],
)
def test_config_json_that_is_not_a_config(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path, content, said
) -> None:
    repo = variant(tiny_qwen_repo, tmp_path / "cfg", files={"config.json": content})
    hub_env.add_repo("Bad/cfg", repo)
    before = snapshot(base_ws.root)
    for source in ("Bad/cfg", str(repo)):
        res = cli("models", "import", source, "--name", "cfg", "--accept-license")
        assert res.exit_code == 2, res.output
        assert said in flat(res.output) and "Unexpected error" not in res.output
        assert snapshot(base_ws.root) == before


def test_huge_config_json_is_refused_before_downloading_it(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, tmp_path: Path
) -> None:
    huge = b'{"model_type": "qwen2", "pad": "' + b"x" * (9 << 20) + b'"}'
    repo = variant(tiny_qwen_repo, tmp_path / "huge", files={"config.json": huge})
    hub_env.add_repo("Bad/huge-config", repo)
    before = snapshot(base_ws.root)
    hub_env.served.clear()
    res = cli("models", "import", "Bad/huge-config", "--accept-license")
    assert res.exit_code == 2 and "a model config is a few kilobytes" in flat(res.output)
    assert hub_env.served["config.json"] == 0
    assert snapshot(base_ws.root) == before


# -- pickles that would run code ------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_malicious_bin_is_refused_with_the_real_reason(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    if fmt == "torch.save":
        torch.save({"w": _Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"w": _Evil(marker)}))
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeWeightsError) as info:
        convert_pickled({"pytorch_model.bin": path}, tmp_path / "out")
    text = str(info.value)
    assert "loading it could run code on this machine" in text and "safetensors" in text
    assert "will likely succeed" not in text and "set to `False`" not in text
    assert not marker.exists()


def test_malicious_optimizer_state_is_refused_with_the_real_reason(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state": _Evil(marker)}, tmp_path / "optimizer.pt")
    with pytest.raises(CheckpointError) as info:
        load_optimizer_state(tmp_path)
    text = str(info.value)
    assert "could run code" in text and "will likely succeed" not in text
    assert info.value.__cause__ is None and not marker.exists()  # torch's advice not chained


def test_legacy_pickled_weights_are_converted(cli, workspace, tiny_qwen_repo, tmp_path) -> None:
    from safetensors.torch import load_file

    repo = variant(tiny_qwen_repo, tmp_path / "legacy", remove=("model.safetensors",))
    state = load_file(tiny_qwen_repo / "model.safetensors")
    torch.save(state, repo / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    res = cli("models", "import", str(repo), "--name", "legacy", "--accept-license")
    assert res.exit_code == 0, res.output
    converted = load_file(workspace.models_dir / "legacy" / "model.safetensors")
    assert all(torch.equal(converted[k], v) for k, v in state.items())


# -- a repository that moves on, and names --------------------------------------------------
@pytest.mark.parametrize("moment", ["info", "tree", "file"])
def test_repository_changing_during_import_says_so(
    cli, base_ws, hub_env: LocalHub, tiny_qwen_repo: Path, moment: str
) -> None:
    def move_on(repo, kind: str, name: str) -> None:
        if kind == moment and (kind != "file" or name == "generation_config.json"):
            repo.sha, repo.on_serve = "f" * 40, None  # a new commit; the old one is gone

    repo = hub_env.add_repo("Moving/tiny", tiny_qwen_repo, on_serve=move_on)
    registry = base_ws.registry_path.read_bytes()
    res = cli("models", "import", "Moving/tiny", "--name", "moving", "--accept-license")
    assert res.exit_code == 1, res.output
    text = flat(res.output)
    assert "changed while it was being imported" in text and "Retry the import" in text
    assert "None" not in text and "leave out" not in text
    assert base_ws.registry_path.read_bytes() == registry
    assert not (base_ws.models_dir / "moving").exists()
    assert repo.sha == "f" * 40
    res = cli("models", "import", "Moving/tiny", "--name", "moving", "--accept-license")
    assert res.exit_code == 0, res.output  # the retry takes the repository as it is now


def test_suggested_name_is_free_and_valid(cli, workspace, tiny_qwen_repo: Path) -> None:
    src = str(tiny_qwen_repo)
    assert cli("models", "import", src, "--name", "tiny-qwen", "--accept-license").exit_code == 0
    res = cli("models", "import", src, "--name", "TINY-QWEN", "--accept-license")
    assert res.exit_code == 2 and "Try --name 'tiny-qwen-2'" in flat(res.output), res.output
    res = cli("models", "import", src, "--name", "tiny-qwen", "--accept-license")
    assert res.exit_code == 1 and "--name tiny-qwen-2" in flat(res.output), res.output
    assert "--force" in res.output
    res = cli("models", "import", src, "--name", "tiny-qwen-2", "--accept-license")
    assert res.exit_code == 0, res.output
