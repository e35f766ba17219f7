"""modeling/dropout.py: dropout masks drawn on every core, and the attention that uses them.

The masks must be what dropout promises (each element kept with probability 1 - p and scaled
by 1 / (1 - p)), a function of the default generator's state alone (not of the number of
threads: a run must resume exactly and two runs from one seed must agree), and usable in a
forked child (a thread pool made by the parent does not exist there).
"""

from __future__ import annotations

import math
import multiprocessing

import pytest
import torch
import torch.nn.functional as F

from llmforge.modeling.dropout import (
    CHUNK,
    ParallelDropout,
    _executor,
    dropout,
    dropout_noise,
)
from llmforge.modeling.transformer import Transformer, TransformerConfig, _dropout_attention


@pytest.fixture
def threads():
    """Restore torch's thread count after a test changes it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_each_element_is_kept_with_probability_one_minus_p_and_scaled(p: float) -> None:
    torch.manual_seed(0)
    n = 8 * CHUNK + 123  # several chunks and a short last one
    noise = dropout_noise(torch.empty(n), p)
    keep = 1 - p
    values = noise.unique().tolist()
    assert values == [0.0, pytest.approx(1 / keep)]
    kept = int((noise != 0).sum())
    # binomial(n, keep): within 5 standard deviations
    assert abs(kept - n * keep) < 5 * math.sqrt(n * keep * p)
    # each chunk has its own stream (one seed for all would repeat the first chunk's mask)
    assert not torch.equal(noise[:CHUNK], noise[CHUNK : 2 * CHUNK])
    # every chunk is drawn, the last one too (a chunk left unfilled would be all 0 or garbage)
    for i in range(0, n, CHUNK):
        part = noise[i : i + CHUNK]
        assert 0.5 * keep < float((part != 0).float().mean()) < min(1.0, 1.5 * keep)


def test_the_mask_is_a_function_of_the_seed_not_of_the_thread_count(threads) -> None:
    like = torch.empty(16, 6, 64, 256)  # 6 chunks
    masks = []
    for count in (1, 2, 3):
        threads(count)
        torch.manual_seed(7)
        masks.append(dropout_noise(like, 0.2))
    assert all(torch.equal(masks[0], m) for m in masks[1:])
    torch.manual_seed(8)
    assert not torch.equal(dropout_noise(like, 0.2), masks[0])
    # consecutive masks differ: the default generator moves on
    torch.manual_seed(7)
    first, second = dropout_noise(like, 0.2), dropout_noise(like, 0.2)
    assert torch.equal(first, masks[0]) and not torch.equal(first, second)


def test_the_generator_state_after_a_mask_is_the_same_on_any_thread_count(threads) -> None:
    """What follows a dropout (the next batch's draw) must not depend on the threads."""
    after = []
    for count in (1, 2):
        threads(count)
        torch.manual_seed(3)
        dropout_noise(torch.empty(3 * CHUNK), 0.1)
        after.append(torch.get_rng_state())
    assert torch.equal(after[0], after[1])


def test_bf16_noise_is_bf16_with_exact_values() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 1024, dtype=torch.bfloat16)
    noise = dropout_noise(x, 0.2)
    assert noise.dtype == torch.bfloat16 and noise.shape == x.shape
    assert set(noise.float().unique().tolist()) == {0.0, 1.25}
    kept = float((noise != 0).float().mean())
    assert abs(kept - 0.8) < 0.01


def test_dropout_multiplies_by_the_noise_and_its_gradient_is_the_noise() -> None:
    x = torch.randn(32, 512, requires_grad=True)
    torch.manual_seed(5)
    out = dropout(x, 0.3, training=True)
    torch.manual_seed(5)
    noise = dropout_noise(x.detach(), 0.3)
    assert torch.equal(out, x.detach() * noise)
    out.sum().backward()
    assert torch.equal(x.grad, noise)


def test_dropout_is_the_identity_in_eval_mode_and_at_p_0() -> None:
    x = torch.randn(4, 8)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0, training=True) is x
    layer = ParallelDropout(0.5).eval()
    assert layer(x) is x and "p=0.5" in repr(layer)
    state = torch.get_rng_state()
    layer(x)
    assert torch.equal(torch.get_rng_state(), state)  # no draw in eval


def _child(queue) -> None:
    # the pool alone: torch's own parallel kernels can hang in a child forked after the
    # parent ran them (GNU OpenMP is not fork-safe), whatever this module does
    queue.put(_executor(1).submit(int, "42").result(timeout=20))


def test_a_forked_child_gets_its_own_thread_pool(threads) -> None:
    threads(2)
    dropout_noise(torch.empty(4 * CHUNK), 0.2)
    parent = _executor(1)  # the parent's pool of one worker exists now
    assert _executor(1) is parent
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked child's task never ran: it went to the parent's pool"
    assert queue.get(timeout=5) == 42


def test_dropout_attention_is_causal_attention_times_the_mask() -> None:
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 40, 16
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    torch.manual_seed(11)
    out = _dropout_attention(q, k, v, 0.25)
    # the weights from SDPA itself: attention over the identity as values
    eye = torch.eye(T).expand(B, H, T, T)
    weights = F.scaled_dot_product_attention(q, k, eye, is_causal=True)  # (B, H, T, T)
    torch.manual_seed(11)
    noise = dropout_noise(weights, 0.25)
    torch.testing.assert_close(out, (weights * noise) @ v, rtol=1e-5, atol=1e-6)
    # nothing from the future: a change to the last position leaves the others unchanged
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 1.0
    v2[:, :, -1] += 1.0
    torch.manual_seed(11)
    out2 = _dropout_attention(q, k2, v2, 0.25)
    torch.testing.assert_close(out2[:, :, :-1], out[:, :, :-1], rtol=1e-5, atol=1e-6)


def test_the_model_trains_through_it_and_evaluates_without_it() -> None:
    cfg = TransformerConfig(vocab_size=50, block_size=32, n_layers=2, d_model=32, n_heads=4)
    model = Transformer(TransformerConfig(**{**cfg.to_dict(), "dropout": 0.2}))
    idx = torch.randint(0, 50, (4, 32))
    model.eval()
    _, eval_a, _ = model(idx, idx)
    _, eval_b, _ = model(idx, idx)
    assert torch.equal(eval_a, eval_b)  # no dropout in eval
    model.train()
    torch.manual_seed(2)
    _, train_a, _ = model(idx, idx)
    torch.manual_seed(2)
    _, train_b, _ = model(idx, idx)
    torch.manual_seed(3)
    _, train_c, _ = model(idx, idx)
    assert torch.equal(train_a, train_b) and not torch.equal(train_a, train_c)
    assert not torch.equal(train_a, eval_a)
    train_a.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
