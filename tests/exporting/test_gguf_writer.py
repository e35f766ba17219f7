"""The GGUF writer's parts on Hugging Face folders: mapping, stop-token rule, K-quants, a
third-party architecture declared as one table, refusals, and an interrupted export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_helpers import (
    PROMPT,
    REPLY,
    cosine,
    hf_ids,
    hf_logits,
    hf_model,
    llama_logits,
    load,
    metadata,
)

from llmforge.adapters.gguf_mapping import LLAMA_LIKE_HPARAMS, LLAMA_LIKE_TENSORS, GGUFMapping
from llmforge.adapters.qwen import QWEN2_GGUF, QWEN3_GGUF
from llmforge.errors import ExportError
from llmforge.exporting.gguf_export import export_gguf
from llmforge.exporting.gguf_quant import quantize_gguf
from llmforge.exporting.gguf_writer import GGUFInfo, plan_gguf, write_gguf
from llmforge.workspace import Workspace

INFO = GGUFInfo(name="t", license="apache-2.0", custom={"step": 1})


def _write(folder: Path, out: Path, mapping=QWEN2_GGUF, dtype="f32") -> Path:
    write_gguf(plan_gguf(folder, mapping, dtype), out, INFO)
    return out


@pytest.mark.parametrize("which", ["tiny-base", "tiny-qwen3"])
def test_tables_agree_with_llama_cpp_converter(gguf_ws, which):
    """Every tensor maps to the name llama.cpp's own converter (gguf-py's map) gives it."""
    from safetensors import safe_open

    mapping = {"tiny-base": QWEN2_GGUF, "tiny-qwen3": QWEN3_GGUF}[which]
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[mapping.name]
    ref = gguf.get_tensor_name_map(arch, 2)
    with safe_open(gguf_ws / "models" / which / "model.safetensors", "pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
            assert mapping.gguf_name(name) == ref.get_name(name, try_suffixes=(".weight", ".bias"))


@pytest.fixture(scope="module")
def turn_model(chat_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat fine-tune with <|im_end|> renamed <|turn_end|>, a turn end llama.cpp does not
    know by name: it stops there only if the GGUF's metadata says so."""
    folder = tmp_path_factory.mktemp("turn") / "model"
    shutil.copytree(chat_hf, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        p = folder / name
        if p.is_file():
            p.write_text(p.read_text().replace("<|im_end|>", "<|turn_end|>"))
    return folder


def _variant(src: Path, dst: Path, eos_ids: list[int], template: bool) -> Path:
    shutil.copytree(src, dst)
    (dst / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
    if not template:
        (dst / "chat_template.jinja").unlink(missing_ok=True)
        cfg = json.loads((dst / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def test_the_stop_token_comes_from_the_checkpoint(turn_model, tmp_path):
    """Listed in generation_config.json, or found after an assistant turn in the chat template:
    eos / eot; neither (what a converter copying the base's EOS writes): it runs on."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(turn_model)
    turn = tok.convert_tokens_to_ids("<|turn_end|>")
    prompt = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    cases = {"listed": ([0, turn], True, "stop"), "from-template": ([0], True, "stop")}
    cases["unknown"] = ([0], False, "length")
    for name, (eos_ids, template, reason) in cases.items():
        folder = _variant(turn_model, tmp_path / name, eos_ids, template)
        out = _write(folder, tmp_path / f"{name}.gguf")
        choice = load(out).create_completion(prompt, max_tokens=24, temperature=0.0)
        choice = choice["choices"][0]
        assert choice["finish_reason"] == reason, name
        assert choice["text"].startswith(REPLY)
        assert (choice["text"] == REPLY) == (reason == "stop")
        kv = metadata(out)
        assert kv["tokenizer.ggml.eos_token_id"] == (turn if name == "listed" else 0)
        assert kv.get("tokenizer.ggml.eot_token_id") == (turn if template else None)


def _wide_model(src: Path, folder: Path, hidden: int, arch: str = "qwen2") -> Path:
    """A random model of ``hidden`` width with the tiny tokenizer of ``src``."""
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    common = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]),
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(4)
    cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    config_cls, model_cls = cls[arch]
    model_cls(config_cls(**common)).save_pretrained(folder)
    GenerationConfig(eos_token_id=[0]).save_pretrained(folder)
    return folder


def test_k_quants_through_llama_cpp(chat_hf, tmp_path):
    folder = _wide_model(chat_hf, tmp_path / "wide", 256)
    f16 = _write(folder, tmp_path / "f16.gguf", dtype="f16")
    report = quantize_gguf(f16, tmp_path / "q4.gguf", "q4_k_m")
    assert report.types.get("Q4_K", 0) >= 10 and report.fell_back({"Q4_K", "Q6_K"}) == 0
    kv = metadata(tmp_path / "q4.gguf")
    assert kv["llmforge.step"] == 1 and kv["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert kv["tokenizer.ggml.eos_token_id"] == metadata(f16)["tokenizer.ggml.eos_token_id"]
    ids = hf_ids(folder)
    ref = hf_logits(hf_model(folder), ids)
    assert cosine(ref, llama_logits(tmp_path / "q4.gguf", ids)) > 0.95
    with pytest.raises(ExportError, match="already quantized"):
        quantize_gguf(tmp_path / "q4.gguf", tmp_path / "again.gguf", "q4_k_m")


def _permute(heads_key: str):
    def fn(w, config):  # (out, in): rotate-half pairs -> interleaved pairs, per head
        n = config[heads_key]
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    return fn


def test_a_third_party_architecture_is_one_table(chat_hf, tmp_path):
    """Llama, declared as a third-party adapter would: the shared table plus llama.cpp's q/k
    row permutation (llama.cpp's llama rotates interleaved pairs, transformers halves)."""
    llama = GGUFMapping(
        name="llama",
        hf_architectures=("LlamaForCausalLM",),
        tensors=dict(LLAMA_LIKE_TENSORS),
        hparams=LLAMA_LIKE_HPARAMS,
        pre_tokenizer="qwen2",
        transforms={
            "model.layers.{bid}.self_attn.q_proj": _permute("num_attention_heads"),
            "model.layers.{bid}.self_attn.k_proj": _permute("num_key_value_heads"),
        },
    )
    folder = _wide_model(chat_hf, tmp_path / "llama", 64, "llama")
    out = _write(folder, tmp_path / "llama.gguf", llama)
    ids = hf_ids(folder)
    assert np.abs(hf_logits(hf_model(folder), ids) - llama_logits(out, ids)).max() < 1e-3
    with pytest.raises(ExportError, match="not cover"):  # a Qwen2 folder is not a Llama
        plan_gguf(chat_hf, llama, "f32")
    bad = GGUFMapping("llama", ("LlamaForCausalLM",), {"lm_head": "no_such"}, (), "qwen2")
    with pytest.raises(ExportError, match="does not load"):
        bad.validate()


def test_a_tokenizer_llama_cpp_would_split_differently_is_refused(chat_hf, tmp_path):
    folder = tmp_path / "gpt2tok"
    shutil.copytree(chat_hf, folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ExportError, match="pre-tokenizer"):
        plan_gguf(folder, QWEN2_GGUF, "f16")


def test_an_interrupted_export_leaves_nothing(gguf_ws, tmp_path):
    dest = tmp_path / "out" / "chat"

    def interrupt(done: int, total: int) -> None:
        if done < total:
            raise KeyboardInterrupt  # Ctrl-C after the first tensor

    with pytest.raises(KeyboardInterrupt):
        export_gguf(Workspace(root=gguf_ws), "chat", dest, progress=interrupt)
    assert not (tmp_path / "out").exists()  # not even the parent it made


@pytest.mark.parametrize(
    "extra", [{"use_rslora": True, "rank_pattern": {"v_proj": 4}}, {"alpha_pattern": {"q_proj": 4}}]
)
def test_per_module_lora_scales_fold_into_lora_b(gguf_ws, tmp_path, extra):
    """llama.cpp has one alpha per file; rsLoRA and per-module ranks/alphas still match peft."""
    import torch
    from peft import LoraConfig, get_peft_model

    from llmforge.exporting.gguf_lora import plan_lora, write_lora

    base = gguf_ws / "models/tiny-base"
    torch.manual_seed(5)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False, **extra)
    peft_model = get_peft_model(hf_model(base), cfg)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = hf_ids(base)
    merged = hf_logits(peft_model.merge_and_unload(), ids)
    write_lora(plan_lora(tmp_path / "adapter", base, QWEN2_GGUF, "f32"), tmp_path / "a.gguf", INFO)
    got = llama_logits(
        _write(base, tmp_path / "base.gguf"), ids, lora_path=str(tmp_path / "a.gguf")
    )
    assert np.abs(merged - got).max() < 2e-3
