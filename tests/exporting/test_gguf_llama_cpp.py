"""``ckpt export --format gguf`` checked in llama.cpp itself against transformers.

Every GGUF here is written by the real command (``llmforge ckpt export``) and loaded by
llama.cpp (llama-cpp-python); the reference is transformers on the Hugging Face export
(``--format hf``) of the same checkpoint, or on the registry model's own folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_helpers import (
    PROMPT,
    REPLY,
    cosine,
    export,
    gguf_file,
    hf_ids,
    hf_logits,
    hf_model,
    llama_logits,
    load,
    metadata,
)


@pytest.mark.parametrize(
    ("dtype", "atol", "min_cos"), [("f32", 1e-3, 0.99999), ("q8_0", None, 0.995)]
)
def test_logits_match_transformers(gguf_ws, chat_hf, tmp_path, dtype, atol, min_cos):
    out = export(gguf_ws, tmp_path / "g", "chat", "--format", "gguf", "--dtype", dtype)
    ids = hf_ids(chat_hf)
    ref, got = hf_logits(hf_model(chat_hf), ids), llama_logits(gguf_file(out), ids)
    assert got.shape == ref.shape
    if atol is not None:
        assert np.abs(ref - got).max() < atol
    assert cosine(ref, got) > min_cos


def test_tokenization_matches_the_tokenizer(gguf_ws, chat_hf, tmp_path):
    out = export(gguf_ws, tmp_path / "g", "chat", "--format", "gguf", "--dtype", "f32")
    llm = load(gguf_file(out), vocab_only=True)
    from gguf_helpers import TEXT

    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == hf_ids(chat_hf)


def test_a_chat_fine_tune_stops_at_im_end(gguf_ws, chat_hf, tmp_path):
    """A ChatML fine-tune of a base model: llama.cpp's own generation stops after the reply."""
    from transformers import AutoTokenizer

    out = export(gguf_ws, tmp_path / "g", "chat", "--format", "gguf")
    tok = AutoTokenizer.from_pretrained(chat_hf)
    prompt = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    llm = load(gguf_file(out))
    choice = llm.create_completion(prompt, max_tokens=24, temperature=0.0)["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (REPLY, "stop")
    kv = metadata(gguf_file(out))
    im_end, eot = (
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    assert kv["tokenizer.ggml.eos_token_id"] == kv["tokenizer.ggml.eot_token_id"] == im_end
    assert kv["tokenizer.ggml.eos_token_ids"] == [im_end, eot]


def test_metadata_holds_lineage_license_and_the_trained_template(gguf_ws, tmp_path):
    out = export(gguf_ws, tmp_path / "g", "chat", "--format", "gguf")
    kv = metadata(gguf_file(out))
    meta = json.loads((gguf_ws / "runs/chat/checkpoints/step-000060/meta.json").read_text())
    assert kv["general.architecture"] == "qwen2"
    assert kv["general.name"] == "chat (step 60)"
    assert kv["general.license"] == "apache-2.0"
    assert kv["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert kv["general.base_model.count"] == 2  # tiny-base, then the hub model it came from
    assert kv["general.base_model.0.name"] == "tiny-base"
    assert kv["general.base_model.1.name"] == "Qwen2-Tiny"
    assert kv["general.base_model.1.organization"] == "Qwen"
    assert kv["general.base_model.1.repo_url"] == "https://huggingface.co/Qwen/Qwen2-Tiny"
    assert kv["llmforge.step"] == 60 and kv["llmforge.run"] == "chat"
    assert kv["llmforge.manifest"] == "runs/chat/checkpoints/step-000060/manifest.json"
    assert kv["llmforge.lineage"] == "run chat step 60 <- tiny-base <- hf:Qwen/Qwen2-Tiny"
    assert (kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"]) == ("gpt2", "qwen2")
    assert kv["tokenizer.chat_template"] == meta["chat"]["chat_template"]
    assert kv["tokenizer.ggml.add_bos_token"] is False
    card = (out / "README.md").read_text()
    assert "library_name: gguf" in card and "base_model: Qwen/Qwen2-Tiny" in card
    assert "ollama create NAME -f Modelfile" in card


def test_an_untied_qwen3_registry_model(gguf_ws, tmp_path):
    """A registry model exports the same way; Qwen3's q/k norms and its own lm_head map, and
    the embedding's unused rows become [PAD{i}] tokens."""
    out = export(gguf_ws, tmp_path / "g", "tiny-qwen3", "--format", "gguf", "--dtype", "f32")
    folder = gguf_ws / "models/tiny-qwen3"
    ids = hf_ids(folder)
    ref, got = hf_logits(hf_model(folder), ids), llama_logits(gguf_file(out), ids)
    assert np.abs(ref - got).max() < 1e-3
    kv = metadata(gguf_file(out))
    assert kv["general.architecture"] == "qwen3" and kv["general.name"] == "tiny-qwen3"
    assert kv["qwen3.attention.key_length"] == 16
    tok = json.loads((folder / "tokenizer.json").read_text())
    n_tok, rows = len(tok["model"]["vocab"]), json.loads((folder / "config.json").read_text())
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == rows["vocab_size"] > n_tok
    assert tokens[n_tok:] == [f"[PAD{i}]" for i in range(n_tok, rows["vocab_size"])]
    assert set(types[n_tok:]) == {gguf.TokenType.UNUSED}
    names = {t.name for t in gguf.GGUFReader(gguf_file(out)).tensors}
    assert {"output.weight", "blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"} <= names


@pytest.fixture(scope="module")
def lora_merged_hf(gguf_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(gguf_ws, tmp_path_factory.mktemp("hf") / "lora", "lora", "--merge")


def test_a_lora_checkpoint_exports_merged(gguf_ws, lora_merged_hf, tmp_path):
    out = export(gguf_ws, tmp_path / "g", "lora", "--format", "gguf", "--dtype", "f32")
    ids = hf_ids(lora_merged_hf)
    ref = hf_logits(hf_model(lora_merged_hf), ids)
    assert np.abs(ref - llama_logits(gguf_file(out), ids)).max() < 1e-3


def test_a_gguf_lora_adapter_applies_on_the_base_gguf(gguf_ws, lora_merged_hf, tmp_path):
    out = export(
        gguf_ws, tmp_path / "g", "lora", "--format", "gguf", "--adapter", "--with-base",
        "--dtype", "f32",
    )  # fmt: skip
    base, adapter = gguf_file(out), next(out.glob("*-lora-*.gguf"))
    kv = metadata(adapter)
    assert (kv["general.type"], kv["adapter.type"]) == ("adapter", "lora")
    assert kv["adapter.lora.alpha"] == pytest.approx(16.0)
    ids = hf_ids(lora_merged_hf)
    merged = hf_logits(hf_model(lora_merged_hf), ids)
    plain = llama_logits(base, ids)
    got = llama_logits(base, ids, lora_path=str(adapter))
    assert np.abs(merged - plain).max() > 1e-2  # the adapter changes the model ...
    assert np.abs(merged - got).max() < 1e-3  # ... exactly as peft's merge does
    from llmforge.exporting.modelfile import parse_modelfile

    cmds = parse_modelfile((out / "Modelfile").read_text())
    assert cmds[:2] == [("model", f"./{base.name}"), ("adapter", f"./{adapter.name}")]
    # The base's GGUF carries the fine-tune's stop tokens: the adapter file has no vocabulary.
    assert [a for c, a in cmds if c == "stop"] == ["<|im_end|>", "<|endoftext|>"]


def test_a_registered_lora_adapter_exports_like_its_checkpoint(gguf_ws, lora_merged_hf, tmp_path):
    """A registry adapter entry (``ckpt register`` of a LoRA run): merged, or as an adapter."""
    import shutil

    from train_helpers import run_cli

    ws = tmp_path / "ws"
    shutil.copytree(gguf_ws, ws, symlinks=True)
    assert run_cli(ws, "ckpt", "register", "lora", "--name", "lora-ent").exit_code == 0
    ids = hf_ids(lora_merged_hf)
    ref = hf_logits(hf_model(lora_merged_hf), ids)
    merged = export(ws, tmp_path / "m", "lora-ent", "--format", "gguf", "--dtype", "f32")
    assert np.abs(ref - llama_logits(gguf_file(merged), ids)).max() < 1e-3
    args = ("--format", "gguf", "--dtype", "f32", "--adapter", "--with-base")
    out = export(ws, tmp_path / "a", "lora-ent", *args)
    adapter = next(out.glob("*-lora-*.gguf"))
    got = llama_logits(gguf_file(out), ids, lora_path=str(adapter))
    assert np.abs(ref - got).max() < 1e-3
