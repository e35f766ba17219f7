"""A third-party adapter, installed as a separate distribution, adds an architecture.

The test writes a tiny package ``llmforge_llama`` (the adapter module of docs/adapters.md)
and its ``.dist-info`` metadata (``entry_points.txt`` declaring it in the
``llmforge.adapters`` group) into a folder that subprocesses get on ``PYTHONPATH``: that is
what an installed distribution is, and ``importlib.metadata`` finds it like any other. Then
the normal CLI imports a tiny random Llama from a local folder, trains it a few steps by
``model_name`` and generates with it. llmforge's own code is not touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_models import CORPUS, README, build_tokenizer

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"

# The adapter module exactly as docs/adapters.md shows it (the test checks they agree).
ADAPTER_MODULE = '''\
"""llmforge support for Llama models (transformers' LlamaForCausalLM)."""

from llmforge.adapters.hf_causal import HFCausalLMAdapter


class LlamaAdapter(HFCausalLMAdapter):
    """Llama models, loaded with AutoModelForCausalLM (no remote code)."""

    architecture = "llama"  # the model_type in the model's config.json
'''

ENTRY_POINTS = """\
[llmforge.adapters]
llama = llmforge_llama.adapter:LlamaAdapter
"""

METADATA = """\
Metadata-Version: 2.1
Name: llmforge-llama
Version: 0.1.0
Summary: Llama support for llmforge
Requires-Dist: llmforge
"""


def _install_adapter(site: Path) -> None:
    """Write the package and its dist-info into ``site`` (a folder on PYTHONPATH)."""
    pkg = site / "llmforge_llama"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "adapter.py").write_text(ADAPTER_MODULE, encoding="utf-8")
    info = site / "llmforge_llama-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(METADATA, encoding="utf-8")
    (info / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
    (info / "top_level.txt").write_text("llmforge_llama\n", encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")


def _tiny_llama(folder: Path) -> Path:
    """A random 2-layer LlamaForCausalLM with the tiny BPE tokenizer, in Hugging Face format."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    vocab = build_tokenizer(folder)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    GenerationConfig(eos_token_id=0, pad_token_id=0).save_pretrained(folder)
    (folder / "README.md").write_text(README.replace("Qwen2", "Llama"), encoding="utf-8")
    return folder


def _llmforge(home: Path, *args: str, site: Path | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "llmforge", "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_docs_show_the_adapter_module_and_entry_point() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert ADAPTER_MODULE in text
    assert '[project.entry-points."llmforge.adapters"]' in text
    assert 'llama = "llmforge_llama.adapter:LlamaAdapter"' in text


def test_external_adapter_imports_trains_and_generates(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install_adapter(site)
    src = _tiny_llama(tmp_path / "tiny-llama")
    home = tmp_path / "ws"
    home.mkdir()

    # Without the adapter installed, the import is refused with the supported list.
    res = _llmforge(home, "models", "import", str(src), "--name", "tiny-llama", "--accept-license",
                    site=None)  # fmt: skip
    assert res.returncode != 0
    err = " ".join(res.stderr.split())
    assert "'llama'" in err and "cannot import" in err, res.stderr
    assert "qwen2" in err and "qwen3" in err and "docs/adapters.md" in err
    assert not (home / "models" / "tiny-llama").exists()

    # With it, llama is supported and the whole normal flow works.
    res = _llmforge(home, "models", "import", str(src), "--name", "tiny-llama", "--accept-license",
                    site=site)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    res = _llmforge(home, "models", "info", "tiny-llama", "--json", site=site)
    assert res.returncode == 0, res.stderr
    assert '"architecture": "llama"' in res.stdout

    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(CORPUS), encoding="utf-8")
    cfg = tmp_path / "llama-tiny.yaml"
    cfg.write_text(
        "model_name: tiny-llama\n"
        f"data_path: {data}\n"
        "block_size: 32\nbatch_size: 4\nmax_steps: 6\nwarmup_steps: 1\n"
        "learning_rate: 5.0e-3\nmin_lr: 5.0e-4\nlog_interval: 1\neval_interval: 3\n"
        "eval_steps: 1\nsample_interval: 0\nsave_interval: 6\n",
        encoding="utf-8",
    )
    res = _llmforge(home, "train", str(cfg), site=site)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (home / "runs" / "llama-tiny" / "checkpoints" / "step-000006" / "meta.json").is_file()

    res = _llmforge(home, "generate", "llama-tiny", "--prompt", "The quick", "-n", "12",
                    "-t", "0", site=site)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    # The checkpoint is a Hugging Face folder: transformers' own greedy generate agrees.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = home / "runs" / "llama-tiny" / "checkpoints" / "step-000006"
    tok = AutoTokenizer.from_pretrained(str(ckpt / "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    prompt = tok.encode("The quick", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12)
    new = out[0, len(prompt) :].tolist()
    stops = {tok.eos_token_id, model.generation_config.eos_token_id} - {None}
    new = next((new[:i] for i, t in enumerate(new) if t in stops), new)
    assert res.stdout == "The quick" + tok.decode(new) + "\n"

    # Without the package, llmforge says which adapter is missing and lists the known ones.
    res = _llmforge(home, "generate", "tiny-llama", "--prompt", "x", site=None)
    assert res.returncode != 0
    err = " ".join(res.stderr.split())
    assert re.search(r"No adapter handles the architecture 'llama'", err), res.stderr
    assert "custom-transformer" in err and "qwen2" in err
