"""Table-driven bad input: every case exits non-zero with a message naming the problem and the
fix, shows no traceback, and leaves the workspace byte-for-byte as it was.

The base workspace holds an imported tiny Qwen2 (`tiny-qwen`) and a trained tiny custom run
(`runs/tiny`, checkpoint step 4). Each case copies it, breaks one thing, hashes everything,
runs one command, and hashes again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import snapshot
from hubserver import LocalHub
from llmforge.checkpoints.manifest import MANIFEST_FILE, write_manifest
from llmforge.cli import app
from train_helpers import run_cli, small_corpus, write_config

CK = "runs/tiny/checkpoints/step-000004"


@dataclass
class Env:
    ws: Path  # the workspace (a fresh copy of the base)
    tmp: Path  # a scratch folder outside the workspace
    cfg: Path  # the tiny training config used to make runs/tiny
    hub: LocalHub


@dataclass
class Case:
    id: str
    setup: Callable[[Env], list[str]]  # breaks something, returns the command's arguments
    needles: tuple[str, ...]  # must all appear in stderr (the problem and the fix)
    env: Callable[[Env], dict[str, str]] | None = None


def _yaml(e: Env, text: str) -> list[str]:
    p = e.tmp / "bad.yaml"
    p.write_text(text)
    return ["train", str(p)]


def _data(e: Env, content: bytes | None, is_dir: bool = False) -> list[str]:
    d = e.tmp / "data.txt"
    if is_dir:
        d.mkdir()
    elif content is not None:
        d.write_bytes(content)
    return ["train", str(write_config(e.tmp / "d.yaml", data_path=str(d)))]


def _registry(e: Env, text: str) -> list[str]:
    (e.ws / "models/registry.json").write_text(text)
    return ["models", "list"]


def _edit_registry(e: Env, edit: Callable[[dict], None]) -> list[str]:
    path = e.ws / "models/registry.json"
    data = json.loads(path.read_text())
    edit(data["models"]["tiny-qwen"])
    path.write_text(json.dumps(data))
    return ["models", "info", "tiny-qwen"]


def _qwen_cfg(e: Env) -> str:
    return str(
        write_config(
            e.tmp / "q.yaml", model_name="tiny-qwen", data_path=str(small_corpus(e.tmp / "q.txt"))
        )
    )


def _model_file(e: Env, change: Callable[[Path], None], cmd: str = "train") -> list[str]:
    change(e.ws / "models/tiny-qwen/model.safetensors")
    return ["train", _qwen_cfg(e)] if cmd == "train" else ["generate", "tiny-qwen", "-n", "2"]


def _flip_header(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[8:40] = b"\xff" * 32  # inside the JSON header: same size, unreadable
    _replace(p, bytes(data))


def _replace(p: Path, data: bytes) -> None:
    p.unlink()  # never write through a hard link into the shared cache
    p.write_bytes(data)


def _wrong_arch(e: Env) -> list[str]:
    cfg = e.ws / "models/tiny-qwen/config.json"
    text = cfg.read_text().replace('"model_type": "qwen2"', '"model_type": "llama"')
    _replace(cfg, text.encode())
    return ["train", _qwen_cfg(e)]


def _ckpt(e: Env, change: Callable[[Path], None], cmd: str = "resume") -> list[str]:
    change(e.ws / CK)
    if (e.ws / CK / MANIFEST_FILE).exists():
        # A checkpoint crafted to match its manifest (as one from elsewhere can be): the checks
        # behind the manifest (tensors-only unpickling, safetensors headers) must hold too.
        write_manifest(e.ws / CK)
    if cmd == "resume":
        return ["train", str(e.cfg), "--resume", "latest"]
    if cmd == "info":
        return ["ckpt", "info", "tiny"]
    return ["generate", "tiny/step-4", "-n", "3"]


def _set_state(ckpt: Path, **fields: object) -> None:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state.update(fields)
    (ckpt / "trainer_state.json").write_text(json.dumps(state))


class Evil:
    def __reduce__(self):  # runs on unpickling, if anything unpickles it unsafely
        return (Path.touch, (Path("/tmp/llmforge-pwned"),))


def _llama_folder(e: Env) -> list[str]:
    src = e.ws / "models/tiny-qwen"
    dst = e.tmp / "llama"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "llama", ["LlamaForCausalLM"]
    (dst / "config.json").unlink()
    (dst / "config.json").write_text(json.dumps(cfg))
    return ["models", "import", str(dst), "--name", "llama", "--accept-license"]


def _tokenizer_folder(e: Env, tokenizer_json: bytes | None) -> list[str]:
    """A copy of the tiny Qwen2 whose tokenizer.json is replaced (None: removed)."""
    dst = e.tmp / "tok"
    shutil.copytree(e.ws / "models/tiny-qwen", dst)
    (dst / "tokenizer.json").unlink()  # a hard link into the store: never write through it
    if tokenizer_json is not None:
        (dst / "tokenizer.json").write_bytes(tokenizer_json)
    return ["models", "import", str(dst), "--name", "tok", "--accept-license"]


def _hub_env(e: Env) -> dict[str, str]:
    return {"HF_ENDPOINT": e.hub.url, "HF_HOME": str(e.tmp / "hf"), "HF_TOKEN": ""}


CASES = [
    # -- training configs -----------------------------------------------------------------
    Case(
        "yaml-syntax", lambda e: _yaml(e, "max_steps: [1,\n"), ("not valid YAML", "Fix the syntax")
    ),
    Case(
        "yaml-unknown-key",
        lambda e: _yaml(e, "max_stepz: 3\n"),
        ("unknown key 'max_stepz'", "Known keys"),
    ),
    Case(
        "yaml-wrong-type",
        lambda e: _yaml(e, "max_steps: lots\n"),
        ("key 'max_steps'", "Fix the value"),
    ),
    Case(
        "yaml-zero-batch",
        lambda e: _yaml(e, "batch_size: 0\n"),
        ("key 'batch_size'", "Fix the value"),
    ),
    Case(
        "yaml-negative-lr",
        lambda e: _yaml(e, "learning_rate: -1\n"),
        ("key 'learning_rate'", "Fix"),
    ),
    Case(
        "yaml-min-lr",  # (a warmup not below max_steps is capped, not refused: issue 15)
        lambda e: _yaml(e, "learning_rate: 0.001\nmin_lr: 0.01\n"),
        ("min_lr (0.01)", "Fix"),
    ),
    Case("yaml-precision", lambda e: _yaml(e, "precision: fp16\n"), ("key 'precision'", "Fix")),
    Case("yaml-heads", lambda e: _yaml(e, "d_model: 30\nn_heads: 4\n"), ("divisible", "Fix")),
    Case("yaml-list", lambda e: _yaml(e, "- 1\n- 2\n"), ("must hold a mapping", "max_steps: 300")),
    Case("yaml-run-name", lambda e: _yaml(e, "run_name: a/b\n"), ("run_name", "Fix")),
    Case(
        "yaml-not-utf8",
        lambda e: ["train", str(_binary(e.tmp / "b.yaml"))],
        ("not UTF-8", "UTF-8 YAML"),
    ),
    Case(
        "config-missing",
        lambda e: ["train", str(e.tmp / "nope.yaml")],
        ("does not exist", "configs/"),
    ),
    Case(
        "set-no-equals",
        lambda e: ["train", "--set", "max_steps"],
        ("key=value", "learning_rate=3e-4"),
    ),
    Case(
        "set-unknown-key",
        lambda e: ["train", "--set", "speed=11"],
        ("unknown key 'speed'", "Known keys"),
    ),
    Case("max-steps-zero", lambda e: ["train", "--max-steps", "0"], ("key 'max_steps'", "Fix")),
    # -- data -------------------------------------------------------------------------------
    Case("data-missing", lambda e: _data(e, None), ("does not exist", "data_path")),
    Case("data-empty", lambda e: _data(e, b""), ("is empty", "data_path")),
    Case("data-binary", lambda e: _data(e, b"\x00\x01\x02" * 100), ("looks binary", "UTF-8")),
    Case("data-dir", lambda e: _data(e, None, is_dir=True), ("is not a file", "data_path")),
    Case("data-too-small", lambda e: _data(e, b"tiny text"), ("block_size + 1", "more text")),
    # -- registry.json ----------------------------------------------------------------------
    Case(
        "registry-truncated",
        lambda e: _registry(e, '{"schema_version": 1, "mod'),
        ("not valid JSON", "git checkout"),
    ),
    Case(
        "registry-not-json",
        lambda e: _registry(e, "hello"),
        ("not valid JSON", "will not overwrite"),
    ),
    Case("registry-not-object", lambda e: _registry(e, "[1, 2]"), ("JSON object", "Restore")),
    Case(
        "registry-schema",
        lambda e: _registry(e, '{"schema_version": 99, "models": {}}'),
        ("schema_version 99", "Restore"),
    ),
    Case(
        "registry-bad-field",
        lambda e: _edit_registry(e, lambda m: m.update(num_parameters="many")),
        ("num_parameters", "by hand"),
    ),
    Case(
        "registry-escape-path",
        lambda e: _edit_registry(e, lambda m: m.update(local_path="../../etc")),
        ("local_path", "Restore"),
    ),
    Case(
        "registry-abs-path",
        lambda e: _edit_registry(e, lambda m: m.update(local_path="/etc")),
        ("local_path", "Restore"),
    ),
    # -- model names ------------------------------------------------------------------------
    *[
        Case(
            f"name-{tag}",
            lambda e, n=n: [
                "models",
                "import",
                str(e.ws / "models/tiny-qwen"),
                "--name",
                n,
                "--accept-license",
            ],
            ("not a valid model name", "--name"),
        )
        for tag, n in [("slash", "a/b"), ("dotdot", ".."), ("space", "my model"), ("upper", "Qwen")]
    ],
    Case(
        "model-unknown",
        lambda e: ["models", "info", "tiny-qwn"],
        ("No model named 'tiny-qwn'", "Did you mean 'tiny-qwen'"),
    ),
    Case(
        "delete-no-tty",
        lambda e: ["models", "delete", "tiny-qwen"],
        ("needs confirmation", "--yes"),
    ),
    # -- model files --------------------------------------------------------------------------
    Case(
        "files-missing",
        lambda e: _model_file(e, Path.unlink),
        ("not intact", "models validate tiny-qwen"),
    ),
    Case(
        "files-truncated",
        lambda e: _model_file(e, lambda p: _replace(p, p.read_bytes()[:100])),
        ("not intact", "re-import"),
    ),
    Case(
        "files-corrupt-validate",
        lambda e: (
            _flip_header(e.ws / "models/tiny-qwen/model.safetensors"),
            ["models", "validate"],
        )[1],
        ("failed validation", "Re-import"),
    ),
    Case(
        "files-corrupt-load",
        lambda e: _model_file(e, _flip_header, cmd="generate"),
        ("not a valid safetensors file", "re-import"),  # caught by the quick check, not at load
    ),
    Case("files-wrong-arch", _wrong_arch, ("'llama' model, not 'qwen2'", "re-import")),
    Case(
        "train-unknown-model",
        lambda e: ["train", str(write_config(e.tmp / "u.yaml", model_name="nope"))],
        ("No model named 'nope'", "tiny-qwen"),
    ),
    # -- import -----------------------------------------------------------------------------
    Case("import-unsupported-arch", _llama_folder, ("llama", "qwen2")),
    Case(
        "import-bad-source",
        lambda e: ["models", "import", "not a repo!", "--accept-license"],
        ("'not a repo!' is not a hub id", "local model folder"),
    ),
    Case(
        "import-name-taken",
        lambda e: [
            "models",
            "import",
            str(e.ws / "models/tiny-qwen"),
            "--name",
            "tiny-qwen",
            "--accept-license",
        ],
        ("already in the registry", "--force"),
    ),
    Case(
        "import-no-license",
        lambda e: ["models", "import", str(e.ws / "models/tiny-qwen"), "--name", "other"],
        ("license", "--accept-license"),
    ),
    Case(
        "hub-missing-repo",
        lambda e: ["models", "import", "Qwen/Nope", "--accept-license"],
        ("Qwen/Nope", "spelling"),
        env=_hub_env,
    ),
    Case(
        "hub-gated",
        lambda e: ["models", "import", "Qwen/Gated", "--accept-license"],
        ("gated", "token"),
        env=_hub_env,
    ),
    Case(
        "hub-unreachable",
        lambda e: ["models", "import", "Qwen/Anything", "--accept-license"],
        ("reach", "HF_ENDPOINT"),
        env=lambda e: {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(e.tmp / "hf")},
    ),
    # -- checkpoints --------------------------------------------------------------------------
    Case(
        "ckpt-missing-optimizer",
        lambda e: _ckpt(e, lambda c: (c / "optimizer.pt").unlink()),
        ("incomplete", "optimizer.pt"),
    ),
    Case(
        "ckpt-corrupt-optimizer",
        lambda e: _ckpt(e, lambda c: (c / "optimizer.pt").write_bytes(b"garbage")),
        ("optimizer.pt", "another"),
    ),
    Case(
        "ckpt-malicious-pickle",
        lambda e: _ckpt(e, lambda c: torch.save({"x": Evil()}, c / "optimizer.pt")),
        ("tensors-only", "another"),
    ),
    Case(
        "ckpt-corrupt-weights",
        lambda e: _ckpt(
            e, lambda c: (c / "model.safetensors").write_bytes(b"\x00" * 64), "generate"
        ),
        ("Cannot load weights", "another checkpoint"),
    ),
    Case(
        "ckpt-other-arch",
        lambda e: _ckpt(e, lambda c: _set_meta(c, architecture="qwen2"), "generate"),
        ("config.json", "another checkpoint"),
    ),
    Case(
        "ckpt-unknown-arch",
        lambda e: _ckpt(e, lambda c: _set_meta(c, architecture="mamba9"), "generate"),
        ("mamba9", "Known architectures"),
    ),
    Case(
        "ckpt-no-tokenizer",
        lambda e: _ckpt(e, lambda c: shutil.rmtree(c / "tokenizer"), "generate"),
        ("incomplete", "tokenizer"),
    ),
    Case(
        "resume-unknown",
        lambda e: ["train", str(e.cfg), "--resume", "tiny/step-9"],
        ("no checkpoint at step 9; its one checkpoint is at step 4", "ckpt list tiny"),
    ),
    Case(
        "run-exists",
        lambda e: ["train", str(e.cfg)],
        ("already has checkpoints", "--resume latest"),
    ),
    Case(
        "generate-unknown",
        lambda e: ["generate", "nothing-here"],
        ("neither a checkpoint nor a registered model", "tiny-qwen"),
    ),
    # A model whose tokenizer cannot load is refused at import, not at its first train.
    Case(
        "import-tokenizer-not-json",
        lambda e: _tokenizer_folder(e, b"{{{"),
        ("tokenizer of", "cannot be used", "AutoTokenizer"),
    ),
    Case(
        "import-tokenizer-wrong-shape",
        lambda e: _tokenizer_folder(e, b'{"not": "a tokenizer"}'),
        ("tokenizer of", "cannot be used"),
    ),
    Case(
        "import-tokenizer-missing",
        lambda e: _tokenizer_folder(e, None),
        ("tokenizer of", "no vocabulary"),
    ),
    # Names over the file system's 255-byte limit (ENAMETOOLONG), found by the fuzz pass.
    Case(
        "import-source-too-long",
        lambda e: ["models", "import", "a" * 5000, "--name", "fresh"],
        ("is not a hub id", "5,000 long"),
        env=lambda e: {"HF_HUB_OFFLINE": "1"},
    ),
    Case(
        "import-repo-part-too-long",
        lambda e: ["models", "import", "org/" + "n" * 300, "--name", "fresh"],
        ("is not a hub id", "Qwen/Qwen2-0.5B"),
        env=lambda e: {"HF_HUB_OFFLINE": "1"},
    ),
    Case(
        "generate-source-too-long",
        lambda e: ["generate", "b" * 5000],
        ("neither a checkpoint nor a registered model", "5,000 long"),
    ),
    Case(
        "register-unknown-architecture",
        lambda e: [
            *_ckpt(e, lambda c: _set_meta(c, architecture="evil-arch"), "info")[:0],
            "ckpt",
            "register",
            "tiny",
            "--name",
            "evil",
        ],
        ("evil-arch", "no installed adapter", "Known architectures"),
    ),
    # Found by the fuzz pass (tests/fuzz/), pinned here.
    Case(
        "meta-json-nested-100000-deep",
        lambda e: _ckpt(e, lambda c: (c / "meta.json").write_text("[" * 100_000), "info"),
        ("meta.json", "not valid JSON", "damaged"),
    ),
    Case(
        "manifest-not-utf8",
        lambda e: [(e.ws / CK / MANIFEST_FILE).write_bytes(b"\x80\xff"), "ckpt", "info", "tiny"][
            1:
        ],
        ("manifest.json is not a valid manifest",),
    ),
    Case(
        "config-json-null",
        lambda e: _ckpt(e, lambda c: (c / "config.json").write_text("null"), "generate"),
        ("config.json is not a JSON object",),
    ),
    Case(
        "config-json-claims-3t-parameters",
        lambda e: _ckpt(
            e,
            lambda c: (c / "config.json").write_text(
                json.dumps(
                    {
                        **json.loads((c / "config.json").read_text()),
                        "d_model": 65536,
                        "n_layers": 64,
                    }
                )
            ),
            "generate",
        ),
        ("claims", "parameters in its config.json", "nothing was loaded"),
    ),
    # Found by the fuzz pass: ckpt info read trainer_state.json's elapsed without its schema.
    Case(
        "ckpt-info-elapsed-null",
        lambda e: _ckpt(e, lambda c: _set_state(c, elapsed=None), "info"),
        ("damaged", "'elapsed'"),
    ),
    Case(
        "ckpt-info-elapsed-text",
        lambda e: _ckpt(e, lambda c: _set_state(c, elapsed="x"), "info"),
        ("damaged", "'elapsed'"),
    ),
    Case("ckpt-info-too-long", lambda e: ["ckpt", "info", "tiny/" + "s" * 5000], ("5,000 long",)),
    Case(
        "ckpt-info-step-5000-digits",
        lambda e: ["ckpt", "info", "tiny/step-" + "9" * 5000],
        ("5,005 long", "tiny/step-4"),
    ),
    Case("generate-top-p", lambda e: ["generate", "tiny", "--top-p", "1.5"], ("--top-p", "0.9")),
    Case(
        "generate-temperature",
        lambda e: ["generate", "tiny", "--temperature", "-1"],
        ("--temperature", "0.8"),
    ),
]


def _binary(p: Path) -> Path:
    p.write_bytes(b"max_steps: \xff\xfe\n")
    return p


def _set_meta(ckpt: Path, **fields: object) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    meta.update(fields)
    (ckpt / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_qwen_repo: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad-inputs-base")
    ws = root / "ws"
    ws.mkdir()
    res = run_cli(
        ws, "models", "import", str(tiny_qwen_repo), "--name", "tiny-qwen", "--accept-license"
    )
    assert res.exit_code == 0, res.output
    cfg = write_config(root / "tiny.yaml", data_path=str(small_corpus(root / "c.txt")))
    res = run_cli(ws, "train", str(cfg), "--max-steps", "4")
    assert res.exit_code == 0, res.output
    return ws, cfg


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(
    case: Case, base: tuple[Path, Path], tmp_path: Path, hub: LocalHub, tiny_qwen_repo: Path
) -> None:
    hub.add_repo("Qwen/Gated", tiny_qwen_repo, gated=True, tokens={"hf_secret"})
    ws = tmp_path / "ws"
    shutil.copytree(base[0], ws, symlinks=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    e = Env(ws, scratch, base[1], hub)
    args = case.setup(e)
    before = snapshot(ws)
    env = {"LLMFORGE_DEBUG": "", **(case.env(e) if case.env else {})}
    res = CliRunner().invoke(app, ["--home", str(ws), *args], env=env)
    assert res.exit_code != 0, res.output
    for needle in case.needles:
        assert needle in res.stderr, f"{needle!r} not in: {res.stderr}"
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    assert snapshot(ws) == before
    assert not Path("/tmp/llmforge-pwned").exists()


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40
