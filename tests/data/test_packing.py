"""Packing: the padded run's examples, several to a row, with its loss and gradients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data.packing_helpers import (
    loss_and_grads,
    mixed_examples,
    segments,
    strip_padding,
    tiny_adapter,
)
from llmforge.config import TrainingConfig
from llmforge.data.batches import build_batches, load_data
from llmforge.data.packing import PackedExampleSampler, first_fit_rows, pack_examples
from llmforge.data.samplers import ExampleSampler
from tiny_models import build_tiny_model

BLOCK, PAD = 48, 0


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packing-models")
    return {a: build_tiny_model(root / a, a) for a in ("qwen2", "qwen3")}


def test_first_fit_rows_fills_rows_within_capacity_and_places_each_item_once() -> None:
    lengths = [5, 9, 2, 7, 3, 10, 1, 4]
    rows = first_fit_rows(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    # First-fit decreasing: 10 | 9+1 | 7+3 | 5+4 | 2... -> 5 rows for 44 positions (4.4 full)
    assert rows == [[5], [1, 6], [3, 4], [0, 7], [2]]
    assert first_fit_rows(lengths, 10) == rows  # a pure function of the lengths


def test_a_packed_batch_holds_exactly_the_padded_batchs_examples_in_fewer_positions() -> None:
    exs = mixed_examples(60, 300, BLOCK)
    padded = ExampleSampler(exs, BLOCK, 8, seed=3, pad_id=PAD)
    packed = PackedExampleSampler(exs, BLOCK, 8, seed=3, pad_id=PAD)
    packed_positions = padded_positions = 0
    for step in range(6):
        for micro in range(2):
            x, y = padded.batch(step, micro)
            px, py, pos = packed.batch(step, micro)
            assert px.shape == py.shape == pos.shape and px.size(0) <= 8 and px.size(1) <= BLOCK
            rows = [strip_padding(x[r].tolist(), y[r].tolist(), PAD) for r in range(8)]
            assert sorted(segments(px, py, pos, PAD)) == sorted(rows)
            again = packed.batch(step, micro)  # a pure function of (seed, step, micro)
            assert all(torch.equal(a, b) for a, b in zip(again, (px, py, pos), strict=True))
            packed_positions += px.numel()
            padded_positions += x.numel()
    assert packed_positions < 0.7 * padded_positions
    # Evaluation stays padded: the same batches as without packing.
    assert all(
        torch.equal(a, b) for a, b in zip(packed.eval_batch(1), padded.eval_batch(1), strict=True)
    )


def test_a_row_of_one_example_is_laid_out_as_the_padded_row() -> None:
    exs = mixed_examples(10, 300, BLOCK)
    long = max(exs, key=lambda e: len(e.input_ids))
    short = min(exs, key=lambda e: len(e.input_ids))
    n = len(long.input_ids)
    # Capacity n: the two cannot share a row, so each row is one example plus padding, and
    # the padding continues its example's positions: plain 0..n-1, as in a padded batch.
    x, y, pos = pack_examples([short, long], n, PAD)
    assert torch.equal(pos, torch.arange(n).expand(2, n))
    px, py = ExampleSampler([long, short], n, 2, seed=0, pad_id=PAD).eval_batch(0)
    assert torch.equal(x, px) and torch.equal(y, py)
    # Capacity 2n: one row, positions restart where the second example begins.
    x, _, pos = pack_examples([short, long], 2 * n, PAD)
    m = len(short.input_ids)
    assert x.size(0) == 1 and torch.equal(pos[0], torch.cat([torch.arange(n), torch.arange(m)]))


@pytest.mark.parametrize(
    ("architecture", "attention", "fused", "lora"),
    [
        ("qwen2", "sdpa", 16, False),
        ("qwen2", "eager", 0, False),
        ("qwen3", "sdpa", 0, False),
        ("qwen3", "eager", 16, False),
        ("qwen2", "sdpa", 16, True),  # LoRA: the fused loss unwraps peft's model
        ("qwen2", "sdpa", 0, True),  # LoRA: through peft's own forward
    ],
)
def test_packed_loss_and_gradients_equal_the_padded_ones(
    tiny_models: dict[str, Path], architecture: str, attention: str, fused: int, lora: bool
) -> None:
    adapter = tiny_adapter(tiny_models[architecture], architecture, attention)
    if lora:
        from llmforge.adapters import peft_lora

        torch.manual_seed(0)
        peft_lora.attach(
            adapter, {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
        )
        for _, p in adapter.trainable_parameters():  # B starts at 0: make every grad count
            with torch.no_grad():
                p.normal_(0.0, 0.05)
    adapter.fused_loss_chunk = fused  # the fused LM-head loss, or plain logits
    vocab = adapter.model.config.vocab_size
    exs = mixed_examples(40, vocab, BLOCK, seed=1)
    padded = ExampleSampler(exs, BLOCK, 6, seed=0, pad_id=PAD)
    packed = PackedExampleSampler(exs, BLOCK, 6, seed=0, pad_id=PAD)
    for step in range(3):
        batch = packed.batch(step, 0)
        assert batch[0].size(0) < 6  # several examples share a row
        loss_u, grads_u = loss_and_grads(adapter, padded.batch(step, 0))
        loss_p, grads_p = loss_and_grads(adapter, batch)
        torch.testing.assert_close(loss_p, loss_u, rtol=1e-6, atol=1e-6)
        for name, g in grads_u.items():
            torch.testing.assert_close(grads_p[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_each_packed_examples_logits_are_its_logits_alone(tiny_models: dict[str, Path]) -> None:
    adapter = tiny_adapter(tiny_models["qwen2"], "qwen2", "sdpa")
    exs = mixed_examples(12, adapter.model.config.vocab_size, BLOCK, seed=2)
    x, y, pos = pack_examples(exs, BLOCK, PAD)
    adapter.model.eval()
    with torch.no_grad():
        logits, _ = adapter.forward(x, y, position_ids=pos)  # (R, W, V)
        seen = 0
        for r in range(x.size(0)):
            starts = (pos[r] == 0).nonzero().flatten().tolist()
            for a in starts:
                e = next(e for e in exs if torch.equal(x[r, a : a + len(e.input_ids)], e.input_ids))
                alone, _ = adapter.forward(e.input_ids[None])  # (1, n, V)
                got = logits[r, a : a + len(e.input_ids)]
                torch.testing.assert_close(got, alone[0], rtol=1e-5, atol=1e-5)
                seen += 1
    assert seen == len(exs) and x.size(0) < len(exs)


def _chat_file(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        q = "say " + " ".join(["word"] * (1 + i % 7))
        rows.append(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": q[4:]}]}
        )
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("packing", [True, False])
def test_chat_data_is_packed_by_default_and_recorded(
    tiny_models: dict[str, Path], tmp_path: Path, packing: bool
) -> None:
    adapter = tiny_adapter(tiny_models["qwen2"], "qwen2", "sdpa")
    settings = {"data_path": str(_chat_file(tmp_path / "c.jsonl", 30)), "batch_size": 4}
    cfg = TrainingConfig.from_dict(settings if packing else {**settings, "packing": False})
    batches = build_batches(load_data(cfg, adapter.tokenizer), adapter, cfg, 160)
    assert batches.meta["packing"] is packing
    assert isinstance(batches.train, PackedExampleSampler) is packing
    assert type(batches.val) is ExampleSampler  # validation is padded either way
    assert len(batches.train.batch(0, 0)) == (3 if packing else 2)


def test_packing_is_off_where_the_model_cannot_keep_examples_apart(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    adapter = tiny_adapter(tiny_models["qwen2"], "qwen2", "sdpa")
    adapter.model.config._attn_implementation = "an-unknown-kernel"
    cfg = TrainingConfig.from_dict({"data_path": str(_chat_file(tmp_path / "c.jsonl", 20))})
    batches = build_batches(load_data(cfg, adapter.tokenizer), adapter, cfg, 160)
    assert batches.meta["packing"] is False and not batches.warnings  # the default: quietly
    cfg = TrainingConfig.from_dict({"data_path": cfg.data_path, "packing": True})
    batches = build_batches(load_data(cfg, adapter.tokenizer), adapter, cfg, 160)
    assert batches.meta["packing"] is False
    assert any("packing: true is ignored" in w for w in batches.warnings)
