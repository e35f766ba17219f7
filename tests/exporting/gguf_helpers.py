"""Helpers of the GGUF export tests: constants, the CLI export, llama.cpp and transformers.

GGUF files are loaded by llama.cpp itself (llama-cpp-python). Quantized files are loaded
without llama.cpp's "extra buffer types": llama-cpp-python 0.3.36 on a CPU with AMX crashes
(SIGSEGV) in the AMX repack of Q8_0 / K-quant weights on batched evaluation, for llama.cpp's
own converter's files just as for ours (docs/export.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from train_helpers import run_cli

PROMPT = [{"role": "user", "content": "Say hello."}]
REPLY = "Hello there, friend!"
SYSTEM = 'You are "terse".\nAnswer in one line.'
# Special tokens and non-ASCII: llama.cpp must tokenize this exactly as the tokenizer does.
TEXT = (
    "<|im_start|>user\nGrüße aus Köln! 日本語 🚀 I'M here: 12345\n\n<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# A license text an Ollama Modelfile cannot quote in one piece (a triple quote at a line end)
# and with a form feed, which Ollama's parser drops.
LICENSE_TEXT = 'Apache License 2.0\n\x0cIt says """ \nhere, and ends with quotes """'
TRAIN = {
    "model_name": "tiny-base",
    "block_size": 48,
    "batch_size": 4,
    "max_steps": 60,
    "warmup_steps": 0,
    "learning_rate": 3e-3,
    "min_lr": 3e-3,
    "weight_decay": 0.0,
    "log_interval": 20,
    "eval_interval": 60,
    "eval_steps": 1,
    "sample_interval": 0,
    "save_interval": 60,
    "seed": 0,
}


@contextlib.contextmanager
def _no_extra_buffers() -> Iterator[None]:
    from llama_cpp import llama_cpp as lib

    default = lib.llama_model_default_params

    def params():  # Llama() does not expose use_extra_bufts: see the module docstring
        p = default()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def load(path: Path, **kw: object):
    """The GGUF file loaded by llama.cpp."""
    import llama_cpp

    with _no_extra_buffers():
        return llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, **kw)


def llama_logits(path: Path, ids: list[int], **kw: object) -> np.ndarray:
    """llama.cpp's logits (T, V) for ``ids``, with an F32 KV cache: llama.cpp's default F16
    cache alone moves a trained tiny model's logits by ~4e-3, hiding what the file holds."""
    llm = load(path, logits_all=True, type_k=0, type_v=0, **kw)  # 0 = GGML_TYPE_F32
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def hf_model(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_ids(folder: Path, text: str = TEXT) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-position cosine similarity of two (T, V) logit arrays."""
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


def metadata(path: Path) -> dict:
    """Every key of a GGUF file, read back with gguf-py's own reader."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


def gguf_file(folder: Path) -> Path:
    """The one model GGUF file of an export folder."""
    files = [p for p in folder.glob("*.gguf") if "-lora-" not in p.name]
    assert len(files) == 1, files
    return files[0]


def export(ws: Path, dest: Path, target: str, *args: str) -> Path:
    """``llmforge ckpt export TARGET DEST ARGS`` (it must succeed); returns ``dest``."""
    res = run_cli(ws, "ckpt", "export", target, str(dest), *args)
    assert res.exit_code == 0, res.output
    return dest
