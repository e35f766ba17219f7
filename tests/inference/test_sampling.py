"""What generation samples from and when it stops, checked on the tokens themselves.

``sampling_probs`` (temperature, top-k, top-p) is compared with a direct computation and with
transformers' own logits warpers; ``stream_ids`` (with its KV cache) with full forwards of every
built-in architecture (no cache), also past the context length, and for stop tokens;
``llmforge generate`` with ``--top-k`` / ``--top-p`` end to end, seeded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmforge.adapters import get_adapter
from llmforge.adapters.custom import CustomTransformerAdapter
from llmforge.inference.generation import SamplingOptions, pick_next, sampling_probs, stream_ids
from llmforge.modeling.tokenizers import CharTokenizer, HFTokenizer
from llmforge.modeling.transformer import Transformer, TransformerConfig
from tiny_models import TINY_CONFIGS, build_tiny_model
from train_helpers import run_cli, small_corpus, write_config

V = 50


def _logits(seed: int) -> torch.Tensor:
    """Distinct random logits (no ties, so the kept sets are unambiguous)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, generator=g) * 3


def _nucleus(probs: torch.Tensor, p: float) -> set[int]:
    """The smallest set of the most likely ids whose probability reaches ``p``."""
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += float(probs[i])
        if mass >= p:
            break
    return kept


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature_divides_the_logits(temperature: float) -> None:
    logits = _logits(1)
    probs = sampling_probs(logits, SamplingOptions(temperature=temperature))
    assert torch.allclose(probs, torch.softmax(logits / temperature, -1), atol=1e-7)
    # Lower temperature sharpens: the top token gains probability.
    hotter = sampling_probs(logits, SamplingOptions(temperature=temperature * 2))
    assert probs.max() > hotter.max()


@pytest.mark.parametrize("k", [1, 5, V, V + 10])
def test_top_k_keeps_exactly_the_k_most_likely(k: int) -> None:
    logits = _logits(2)
    probs = sampling_probs(logits, SamplingOptions(temperature=0.7, top_k=k))
    top = set(torch.topk(logits, min(k, V)).indices.tolist())
    assert set(torch.nonzero(probs).flatten().tolist()) == top
    expected = torch.zeros(V)
    idx = torch.tensor(sorted(top))
    expected[idx] = torch.softmax(logits[idx] / 0.7, -1)
    assert torch.allclose(probs, expected, atol=1e-7)


@pytest.mark.parametrize("p", [1e-6, 0.3, 0.75, 0.95, 1.0])
def test_top_p_keeps_the_smallest_set_reaching_p(p: float) -> None:
    for seed in range(5):
        logits = _logits(10 + seed)
        full = torch.softmax(logits / 1.3, -1)
        probs = sampling_probs(logits, SamplingOptions(temperature=1.3, top_p=p))
        kept = _nucleus(full, p)
        assert set(torch.nonzero(probs).flatten().tolist()) == kept
        idx = torch.tensor(sorted(kept))
        assert torch.allclose(probs[idx], full[idx] / full[idx].sum(), atol=1e-6)


def test_the_same_distribution_as_transformers_logits_warpers() -> None:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    for seed, (t, k, p) in enumerate([(0.8, 40, 0.9), (1.5, 10, 0.5), (0.5, 3, 0.99)]):
        logits = _logits(100 + seed)
        warp = LogitsProcessorList(
            [TemperatureLogitsWarper(t), TopKLogitsWarper(k), TopPLogitsWarper(p)]
        )
        theirs = torch.softmax(warp(None, logits[None].clone())[0], -1)
        ours = sampling_probs(logits, SamplingOptions(temperature=t, top_k=k, top_p=p))
        assert torch.allclose(ours, theirs, atol=1e-6), (t, k, p)


def test_pick_next_is_argmax_at_temperature_0_and_samples_only_kept_ids() -> None:
    logits = _logits(3)
    assert pick_next(logits, SamplingOptions(temperature=0), None) == int(logits.argmax())
    gen = torch.Generator().manual_seed(0)
    opts = SamplingOptions(temperature=5.0, top_k=3)  # hot: without top-k any id would come
    drawn = {pick_next(logits, opts, gen) for _ in range(300)}
    assert drawn == set(torch.topk(logits, 3).indices.tolist())
    everything = {pick_next(logits, SamplingOptions(temperature=5.0), gen) for _ in range(300)}
    assert len(everything) > 10


# -- stop tokens and the context length, against full forwards of real models ------------------
# Random weights with a wide init (std 0.3): the greedy tokens depend on the context, so a
# generation bug (a stale or missing KV cache, a wrong window) changes them. A context of 24
# positions makes the window slide within a short generation.
@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def hf_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    arch = request.param
    repo = build_tiny_model(
        tmp_path_factory.mktemp(f"sharp-{arch}") / "repo",
        arch,
        initializer_range=0.3,
        max_position_embeddings=24,
    )
    adapter = get_adapter(arch).load(repo, HFTokenizer(repo))
    adapter.model.eval()
    return adapter


def _greedy_by_full_forwards(adapter, prompt: list[int], n: int, limit: int) -> list[int]:
    """Greedy tokens computed without a cache; past ``limit`` tokens the model sees a window
    that restarts from the most recent ``limit // 2`` tokens (what generate.py documents)."""
    ids, start, out = list(prompt), max(0, len(prompt) - limit), []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = adapter.forward(torch.tensor([ids[start:]]))
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
            if len(ids) - start > limit:
                start = len(ids) - limit // 2
    return out


def test_greedy_with_the_kv_cache_equals_full_forwards_past_the_context(hf_model) -> None:
    assert hf_model.max_context == 24
    for text in ("The quick brown fox", "def add(a, b):\n    return a + b\n" * 3):
        prompt = hf_model.tokenizer.encode(text)
        out = list(stream_ids(hf_model, prompt, SamplingOptions(max_new_tokens=40, temperature=0)))
        assert len(out) == 40 and len(set(out)) > 5  # the tokens vary with the context
        assert out == _greedy_by_full_forwards(hf_model, prompt, 40, 24)


def test_a_stop_token_ends_generation_and_is_not_emitted(hf_model) -> None:
    prompt = hf_model.tokenizer.encode("The quick brown fox")
    # Sampled (seeded, so the same draws come in the same order), a token first drawn at step
    # 3 or later becomes a stop token: generation ends just before it.
    opts = SamplingOptions(max_new_tokens=20, temperature=1.0, seed=4)
    free = list(stream_ids(hf_model, prompt, opts))
    stop = next(t for t in free[3:] if t not in free[:3])
    opts.stop_token_ids = [stop]
    assert list(stream_ids(hf_model, prompt, opts)) == free[: free.index(stop)]
    # The model's own EOS is a stop token by default.
    assert hf_model.tokenizer.eos_token_id in hf_model.stop_token_ids()


@pytest.fixture(scope="module")
def custom() -> CustomTransformerAdapter:
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ")
    cfg = TransformerConfig(
        vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2, block_size=16, dropout=0.0
    )
    model = Transformer(cfg)
    with torch.no_grad():  # a wide init, as above: tokens that depend on the context
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.3)
    adapter = CustomTransformerAdapter(model, tok)
    adapter.model.eval()
    return adapter


def test_generation_past_the_context_slides_its_window(custom: CustomTransformerAdapter) -> None:
    limit = custom.max_context
    assert limit == 16
    for prompt_text in ("the quick", "a" * 40):  # a short prompt, and one longer than the context
        prompt = custom.tokenizer.encode(prompt_text)
        out = list(stream_ids(custom, prompt, SamplingOptions(max_new_tokens=50, temperature=0)))
        assert len(out) == 50 and len(set(out)) > 5  # far past the model's 16 positions
        assert out == _greedy_by_full_forwards(custom, prompt, 50, limit)


# -- end to end: llmforge generate --top-k / --top-p --------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sampling")
    home = root / "ws"
    home.mkdir()
    cfg = write_config(root / "s.yaml", data_path=str(small_corpus(root / "c.txt")), max_steps=4)
    assert run_cli(home, "train", str(cfg)).exit_code == 0
    return home


def _generate(home: Path, *args: str) -> str:
    res = run_cli(home, "generate", "s", "--prompt", "def ", "-n", "40", "--seed", "5", *args)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("def ")
    return res.stdout[len("def ") :]


def test_top_k_1_and_a_tiny_top_p_generate_the_greedy_tokens(trained: Path) -> None:
    greedy = _generate(trained, "--temperature", "0")
    hot = _generate(trained, "--temperature", "3")
    assert hot != greedy  # sampling hot from the whole vocabulary differs from greedy...
    assert _generate(trained, "--temperature", "3", "--top-k", "1") == greedy  # ...not with k=1
    assert _generate(trained, "--temperature", "3", "--top-p", "0.000001") == greedy
    assert _generate(trained, "--temperature", "3", "--top-k", "0") == hot  # 0 = off
    assert _generate(trained, "--temperature", "3", "--top-p", "1") == hot
    assert _generate(trained, "--temperature", "3", "--top-k", "2") != hot
