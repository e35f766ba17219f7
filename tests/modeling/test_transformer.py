"""The from-scratch Transformer: shapes, causality, tying, KV cache."""

from __future__ import annotations

import torch

from llmforge.modeling.transformer import Transformer, TransformerConfig


def _model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(
        TransformerConfig(
            vocab_size=11, n_layers=2, d_model=16, n_heads=2, block_size=12, dropout=0.0
        )
    )
    return m.eval()


def test_shapes_loss_and_tied_weights() -> None:
    m = _model()
    x = torch.randint(0, 11, (3, 7))
    logits, loss, cache = m(x, x)
    assert logits.shape == (3, 7, 11)
    assert loss is not None and loss.ndim == 0
    assert len(cache) == 2 and cache[0][0].shape == (3, 2, 7, 8)
    assert m.lm_head.weight is m.tok_emb.weight


def test_causal_future_tokens_do_not_change_past_logits() -> None:
    m = _model()
    x = torch.randint(0, 11, (1, 8))
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % 11
    with torch.no_grad():
        a, _, _ = m(x)
        b, _, _ = m(y)
    assert torch.allclose(a[0, :5], b[0, :5], atol=1e-6)
    assert not torch.allclose(a[0, 5:], b[0, 5:])


def test_kv_cache_matches_full_forward() -> None:
    m = _model()
    x = torch.randint(0, 11, (1, 9))
    with torch.no_grad():
        full, _, _ = m(x)
        out, _, cache = m(x[:, :4])
        step = [out[:, -1]]
        out2, _, cache = m(x[:, 4:6], past=cache)  # several tokens after a cache
        step.append(out2[:, -1])
        for t in range(6, 9):
            o, _, cache = m(x[:, t : t + 1], past=cache)
            step.append(o[:, -1])
    expected = [full[:, 3], full[:, 5], full[:, 6], full[:, 7], full[:, 8]]
    for got, want in zip(step, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_ignored_targets_do_not_count() -> None:
    m = _model()
    x = torch.randint(0, 11, (2, 6))
    t = x.clone()
    t[:, :3] = -100
    _, masked, _ = m(x, t)
    logits, _, _ = m(x)
    ref = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, 11), x[:, 3:].reshape(-1))
    assert torch.allclose(masked, ref, atol=1e-6)
