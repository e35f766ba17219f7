"""Every built-in importable architecture end to end, in bf16 like every shipped config.

Parametrized over ``tiny_models.TINY_CONFIGS`` (qwen2, qwen3): a new built-in architecture is
covered by adding its tiny config there, and the first test fails until it is. For each: import
from the local hub; a full fine-tune and a LoRA fine-tune in bf16 that resume bit-exactly (fp32
master weights included); their exports loaded by transformers and peft give llmforge's logits;
greedy generation (plain and ``--chat``, on a random model whose tokens depend on the context,
and on a chat fine-tune) that is token for token what transformers' own
``generate(do_sample=False)`` produces.

About the bf16 tolerance: a bf16 run's weights are bf16 (the optimizer's fp32 masters are
rounded into them), so its export is bf16 and says so (config.json ``dtype``), and transformers
loads it in bf16. llmforge loads every checkpoint in fp32 (exactly the same weights, upcast), so
with transformers in fp32 the logits are identical; in bf16 every op rounds to 8 significant
bits (unit roundoff 2^-8), and a 2-layer model's logits then agree to a few units of 2^-8 of
their scale: the test allows 8.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hubserver import LocalHub
from llmforge.adapters import BUILTIN_IMPORTABLE
from llmforge.inference.model_source import load_for_inference
from llmforge.store.registry import ModelRegistry
from llmforge.workspace import Workspace
from tiny_models import CORPUS, TINY_CONFIGS, build_tiny_model, num_parameters
from train_helpers import import_from_local_hub, run_cli

ARCHS = sorted(TINY_CONFIGS)
README = Path(__file__).parents[2] / "README.md"
TEXT = "Fine-tuning adapts a pretrained model to a new task."
BF16_ULP = 2.0**-8
BASE = {
    "model_name": "base",
    "block_size": 32,
    "batch_size": 4,
    "grad_accum_steps": 2,
    "max_steps": 4,
    "warmup_steps": 1,
    "learning_rate": 5e-3,
    "min_lr": 5e-4,
    "weight_decay": 0.01,
    "log_interval": 1,
    "eval_interval": 2,
    "eval_steps": 1,
    "sample_interval": 0,
    "save_interval": 2,
    "precision": "bf16",
    "dropout": 0.1,
}
WORDS = ["apple", "river", "stone", "cloud", "green", "seven", "light", "table"]


def test_every_built_in_architecture_is_covered() -> None:
    assert set(ARCHS) == set(BUILTIN_IMPORTABLE)
    # ... and they are the ones the README lists as built in (besides the custom Transformer).
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|.*\| built in \|$", README.read_text(), re.M)
    assert set(rows) == {*ARCHS, "custom-transformer"}


@pytest.fixture(scope="module", params=ARCHS)
def imported(request: pytest.FixtureRequest, tmp_path_factory, hub: LocalHub) -> dict:
    """A workspace with a tiny model of the architecture imported as ``base``, and data."""
    arch = request.param
    root = tmp_path_factory.mktemp(f"arch-{arch}")
    repo = build_tiny_model(root / "repo", arch)
    home = root / "ws"
    import_from_local_hub(hub, f"Tiny/{arch}", repo, home, "base")
    # Wide random weights: greedy tokens that depend on the context (see tiny_models).
    sharp = build_tiny_model(root / "sharp-repo", arch, initializer_range=0.3)
    import_from_local_hub(hub, f"Tiny/{arch}-sharp", sharp, home, "sharp")
    (root / "corpus.txt").write_text("\n".join(CORPUS), encoding="utf-8")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"say {w}"},
                {"role": "assistant", "content": f"{w} {w}"},
            ]
        }
        for w in WORDS
    ]
    (root / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    for name, extra in {
        "full": {"data_path": str(root / "corpus.txt")},
        "lora": {
            "data_path": str(root / "corpus.txt"),
            "finetune": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
            "learning_rate": 1e-2,
        },
        "chat": {
            "data_path": str(root / "chat.jsonl"),
            "precision": "fp32",
            "max_steps": 12,
            "save_interval": 12,
            "eval_interval": 12,
            "grad_accum_steps": 1,
            "weight_decay": 0.0,
        },
    }.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump({**BASE, **extra}), encoding="utf-8")
    return {"arch": arch, "root": root, "repo": repo}


@pytest.fixture
def home(imported: dict, tmp_path: Path) -> Path:
    """A private copy of the imported workspace."""
    shutil.copytree(imported["root"] / "ws", tmp_path / "ws")
    return tmp_path / "ws"


def train(home: Path, cfg: Path, *args: str) -> None:
    res = run_cli(home, "train", str(cfg), *args)
    assert res.exit_code == 0, res.output


def ckpt(home: Path, run: str, step: int) -> Path:
    return home / "runs" / run / "checkpoints" / f"step-{step:06d}"


def state(path: Path) -> dict:
    return json.loads((path / "trainer_state.json").read_text())


def masters(path: Path) -> dict:
    return torch.load(path / "optimizer.pt", weights_only=True)["master_weights"]


def assert_resumes_bit_exactly(home: Path, cfg: Path, weights_file: str) -> None:
    """N steps straight == N/2 steps, then --resume latest, N/2 more: losses, weights, masters."""
    train(home, cfg, "--run-name", "straight")
    train(home, cfg, "--run-name", "split", "--stop-at", "2")
    train(home, cfg, "--run-name", "split", "--resume", "latest")
    a, b = ckpt(home, "straight", 4), ckpt(home, "split", 4)
    assert state(a)["losses"] == state(b)["losses"]
    wa, wb = load_file(a / weights_file), load_file(b / weights_file)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert {v.dtype for v in wa.values()} == {torch.bfloat16}  # the weights trained in bf16
    ma, mb = masters(a), masters(b)
    assert {m.dtype for m in ma.values()} == {torch.float32} and len(ma) == len(wa)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[i], mb[i]) for i in ma)


def llmforge_logits(home: Path, source: str, ids: torch.Tensor) -> torch.Tensor:
    adapter, _ = load_for_inference(Workspace(home.resolve()), source)
    adapter.model.eval()
    with torch.no_grad():
        return adapter.forward(ids)[0]


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits.float()


def assert_bf16_close(theirs: torch.Tensor, ours: torch.Tensor) -> None:
    scale = float(ours.abs().max())
    assert float((theirs - ours).abs().max()) <= 8 * BF16_ULP * scale


def test_import_records_the_architecture(imported: dict, home: Path) -> None:
    entry = ModelRegistry(Workspace(home.resolve())).get("base")
    assert entry.architecture == imported["arch"] and entry.source == "huggingface"
    assert entry.num_parameters == num_parameters(imported["repo"])
    assert run_cli(home, "models", "validate", "base").exit_code == 0


def test_full_bf16_fine_tune_resumes_exactly_and_exports_llmforges_logits(
    imported: dict, home: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert_resumes_bit_exactly(home, imported["root"] / "full.yaml", "model.safetensors")
    out = tmp_path / "export"
    assert run_cli(home, "ckpt", "export", "split", str(out)).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == imported["arch"] and config["dtype"] == "bfloat16"
    assert {v.dtype for v in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    ids = torch.tensor([AutoTokenizer.from_pretrained(str(out)).encode(TEXT)])
    ours = llmforge_logits(home, "split", ids)
    as_saved = AutoModelForCausalLM.from_pretrained(str(out))
    assert as_saved.dtype == torch.bfloat16  # what transformers loads by default
    assert_bf16_close(hf_logits(as_saved, ids), ours)
    in_fp32 = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert torch.equal(hf_logits(in_fp32, ids), ours)


def test_lora_bf16_fine_tune_resumes_exactly_and_exports_llmforges_logits(
    imported: dict, home: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert_resumes_bit_exactly(home, imported["root"] / "lora.yaml", "adapter_model.safetensors")
    base_dir = home / "models" / "base"
    ids = torch.tensor([AutoTokenizer.from_pretrained(str(base_dir)).encode(TEXT)])
    ours = llmforge_logits(home, "split", ids)

    adapter_dir, merged_dir = tmp_path / "adapter", tmp_path / "merged"
    assert run_cli(home, "ckpt", "export", "split", str(adapter_dir)).exit_code == 0
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    assert torch.equal(hf_logits(PeftModel.from_pretrained(base, str(adapter_dir)), ids), ours)

    assert run_cli(home, "ckpt", "export", "split", str(merged_dir), "--merge").exit_code == 0
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    # The base is fp32 in the registry: the merge is fp32 and says so.
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "float32"
    assert torch.allclose(hf_logits(merged, ids), ours, atol=1e-5, rtol=0)


def _transformers_greedy(
    folder: Path, prompt_ids: list[int], n: int, extra_stops: tuple[int, ...] = ()
) -> list[int]:
    """What transformers' own generate(do_sample=False) makes, cut before the first stop id."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    stops = model.generation_config.eos_token_id
    stops = [*([stops] if isinstance(stops, int) else stops), *extra_stops]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=n, eos_token_id=stops
        )[0, len(prompt_ids) :].tolist()
    return next((out[:i] for i, t in enumerate(out) if t in stops), out)


def test_greedy_generation_equals_transformers_generate(home: Path) -> None:
    from transformers import AutoTokenizer

    folder = home / "models" / "sharp"
    tok = AutoTokenizer.from_pretrained(str(folder))
    n = 24
    for text in ("The quick brown", "def add(a, b):"):
        theirs = _transformers_greedy(folder, tok.encode(text), n)
        assert len(set(theirs)) > 5  # tokens that vary, not one repeated
        res = run_cli(home, "generate", "sharp", "-p", text, "-t", "0", "-n", str(n))
        assert res.exit_code == 0, res.output
        assert res.stdout == text + tok.decode(theirs) + "\n"
    # --chat: the prompt is the model's chat template; <|im_end|> ends the reply too.
    end = tok.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    theirs = _transformers_greedy(folder, tok.encode(prompt), n, (end,))
    res = run_cli(
        home, "generate", "sharp", "--chat", "--system", "Be brief.", "-m", "Hi!", "-t", "0",
        "-n", str(n),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout == tok.decode(theirs) + "\n"


def test_chat_fine_tune_generates_what_transformers_generates(
    imported: dict, home: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    train(home, imported["root"] / "chat.yaml")
    out = tmp_path / "export"
    assert run_cli(home, "ckpt", "export", "chat", str(out)).exit_code == 0
    tok = AutoTokenizer.from_pretrained(str(out))
    n = 12
    messages = [{"role": "user", "content": "say stone"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    theirs = _transformers_greedy(out, tok.encode(prompt), n)
    assert len(theirs) >= 2  # it answers (the reply is not empty)
    res = run_cli(home, "generate", "chat", "-m", "say stone", "-t", "0", "-n", str(n))
    assert res.exit_code == 0, res.output
    assert res.stdout == tok.decode(theirs) + "\n"
    # The fine-tune's stop tokens reach transformers: <|im_end|> ends a reply there too.
    stops = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops
