"""Held-out loss: windows, and llmforge's numbers against an independent plain-transformers
loop, training's own validation loss, and lm-eval's own rolling log-likelihood."""

from __future__ import annotations

import math

import pytest
import torch
from eval_checks import CHATS, TASKS, TEXTS, close, reference, write_jsonl

from llmforge.evaluation import documents, heldout


@pytest.mark.parametrize("context", [1, 2, 5, 16])
def test_windows_score_every_target_once_with_enough_context(context: int) -> None:
    for stride in range(1, context + 1):
        for n in range(0, 60):
            seen: list[int] = []
            for start, end, first in heldout.plan_windows(n, context, stride):
                assert 0 <= start < end <= n - 1 and end - start <= context
                assert start < first <= end
                assert first - start >= min(first, context - stride + 1)
                seen += range(first, end + 1)
            assert seen == list(range(1, n)), (n, context, stride)


def test_windows_with_stride_equal_context_are_lm_evals_rolling_windows() -> None:
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    for n, context in [(1, 4), (3, 4), (4, 4), (5, 4), (17, 4), (40, 7)]:
        tokens = list(range(100, 100 + n))
        theirs = [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(tokens, 0, context, context_len=1)
        ]
        ids = [0, *tokens]  # the prefix token lm-eval prepends
        ours = [
            (ids[start:first], ids[first : end + 1])
            for start, end, first in heldout.plan_windows(len(ids), context, context)
        ]
        assert ours == theirs


@pytest.mark.parametrize(("context", "stride", "batch"), [(16, 16, 4), (16, 5, 3), (512, 512, 8)])
def test_text_loss_matches_plain_transformers(base, context, stride, batch) -> None:
    tok = base.tokenizer
    docs = documents.text_documents(tok, TEXTS)
    opts = heldout.ScoreOptions(context=context, stride=stride, batch_size=batch)
    got = heldout.heldout_loss(heldout.adapter_scorer(base, chunk=7), docs, opts, base.model)
    loss, tokens, per_doc = reference(base.model, docs, context, stride)
    assert got.tokens == tokens == sum(len(tok.encode(t)) - 1 for t in TEXTS)
    assert close(got.loss, loss)
    assert all(close(a, b) for a, b in zip(got.doc_nll, per_doc, strict=True) if b)
    assert got.perplexity == pytest.approx(math.exp(got.loss))
    hf = tok.hf
    text_bytes = sum(len(hf.decode(hf.encode(t)[1:]).encode()) for t in TEXTS)
    assert got.bytes == text_bytes
    assert got.bits_per_byte == pytest.approx(got.nll / math.log(2) / text_bytes)


def test_fine_tune_matches_plain_transformers_and_differs_from_its_base(base, tuned) -> None:
    adapter, _ = tuned
    docs = documents.text_documents(adapter.tokenizer, TEXTS)
    opts = heldout.ScoreOptions(context=16, stride=8, batch_size=4)
    adapter.model.train()
    got = heldout.heldout_loss(heldout.adapter_scorer(adapter), docs, opts, adapter.model)
    assert adapter.model.training  # its mode is restored after scoring
    adapter.model.eval()
    assert type(adapter.model).__name__ == "PeftModelForCausalLM"  # unmerged LoRA
    loss, tokens, _ = reference(adapter.model, docs, 16, 8)
    assert got.tokens == tokens and close(got.loss, loss)
    parent = heldout.heldout_loss(heldout.adapter_scorer(base), docs, opts, base.model)
    assert abs(parent.loss - got.loss) > 1e-3


def test_logits_path_equals_fused_path(base) -> None:
    """A model without a plain head is scored from its logits: the same numbers."""
    docs = documents.text_documents(base.tokenizer, TEXTS)
    opts = heldout.ScoreOptions(context=10, stride=4, batch_size=5)
    fused = heldout.heldout_loss(heldout.adapter_scorer(base), docs, opts)

    class NoFusedHead:
        model = base.model
        forward = base.forward  # logits (B, T, V)

    plain = heldout.heldout_loss(heldout.adapter_scorer(NoFusedHead()), docs, opts)
    assert base.fused_parts() is not None
    assert close(plain.loss, fused.loss, 1e-6) and plain.tokens == fused.tokens


@pytest.mark.parametrize(
    ("fmt", "train_on_prompt"), [("chat", False), ("chat", True), ("prompt-completion", False)]
)
def test_records_loss_equals_trainings_validation_loss(
    base, tmp_path, fmt, train_on_prompt
) -> None:
    """Chat and prompt/completion are masked as training masks them: the held-out loss of the
    validation file is training's own validation loss on one batch of all its examples."""
    from llmforge.config import TrainingConfig
    from llmforge.data.batches import build_batches, load_data

    if fmt == "chat":
        records = [{"messages": m} for m in CHATS]
    else:
        records = [
            {"prompt": "2 + 3 =", "completion": " 5"},
            {"prompt": "Q: fox?", "completion": " A: brown."},
        ]
    val = write_jsonl(tmp_path / "val.jsonl", records)
    cfg = TrainingConfig(
        data_path=str(write_jsonl(tmp_path / "train.jsonl", records)),
        val_data_path=str(val),
        data_format=fmt,
        batch_size=len(records),
        block_size=256,
        train_on_prompt=train_on_prompt,
    )
    batches = build_batches(load_data(cfg), base, cfg, cfg.block_size)
    assert batches.meta["truncated"] == 0
    x, y = batches.val.eval_batch(0)
    with torch.no_grad():
        _, training_loss = base.forward(x, y)

    f = documents.read_eval_file(str(val), fmt)
    docs = documents.file_documents(f, base.tokenizer, train_on_prompt=train_on_prompt)
    opts = heldout.ScoreOptions(context=256, stride=256)
    got = heldout.heldout_loss(heldout.adapter_scorer(base), docs, opts, base.model)
    assert got.tokens == int((y != -100).sum())
    assert close(got.loss, float(training_loss))


@pytest.mark.parametrize(("context", "stride"), [(8, 3), (8, 8)])
def test_masked_chats_in_short_windows_match_plain_transformers(base, context, stride) -> None:
    from llmforge.data.chat_templates import resolve_chat_format

    tok = base.tokenizer
    records = [{"messages": m} for m in CHATS]
    docs = documents.record_documents(tok, records, "chat", resolve_chat_format(tok))
    opts = heldout.ScoreOptions(context=context, stride=stride, batch_size=4)
    got = heldout.heldout_loss(heldout.adapter_scorer(base), docs, opts, base.model)
    loss, tokens, _ = reference(base.model, docs, context, stride)
    assert got.tokens == tokens == sum(d.tokens for d in docs) and close(got.loss, loss)
    turns = "".join(m["content"] + "\n" for c in CHATS for m in c if m["role"] == "assistant")
    assert got.bytes == len(turns.encode())  # the assistant turns' text, <|im_end|> not counted


def test_heldout_equals_lm_evals_rolling_loglikelihood_and_bits_per_byte(base) -> None:
    """With lm-eval's conventions (EOS prefix, stride = context) the per-document NLL and bits
    per byte are lm-eval's own ``loglikelihood_rolling`` numbers on the same texts."""
    from llmforge.evaluation import harness

    hf = base.tokenizer.hf
    opts = harness.HarnessOptions(("local-text",), (str(TASKS / "local_text"),), batch_size=3)
    out = harness.evaluate(harness.make_lm(base.model, hf, batch_size=3, max_length=16), opts)
    lm_ll = [float(s["filtered_resps"][0]) for s in out["samples"]["local-text"]]
    texts = [s["doc"]["text"] for s in out["samples"]["local-text"]]
    docs = documents.text_documents(base.tokenizer, texts, prefix_id=hf.eos_token_id)
    got = heldout.heldout_loss(
        heldout.adapter_scorer(base), docs, heldout.ScoreOptions(16, 16, batch_size=5), base.model
    )
    assert got.doc_nll == pytest.approx([-x for x in lm_ll], rel=1e-5)
    assert got.bytes == sum(len(t.encode()) for t in texts)  # prefix: every token scored
    assert close(got.bits_per_byte, out["results"]["local-text"]["bits_per_byte,none"], 1e-5)
