"""What a training step does with memory: freed blocks reused, and clipping without a pass.

Both levers claim to change nothing a run computes (benchmarks/README.md, row 1, measures
what they buy): the allocator setting must make the next step's large tensors reuse the
pages the last step freed, and the clipping must give the same weights bit for bit as
``clip_grad_norm_`` before the step. No timings here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from llmforge.training.master_weights import MasterWeightOptimizer, to_low_precision
from llmforge.training.parallel import clip_gradients

# A child process allocates and frees a 256 MiB tensor 20 times, as a step allocates and frees
# its gradients, and prints how many pages the last 10 allocations faulted in. ``how``
# decides what it sets up first. glibc carves small blocks out of a freed one, so the first
# few rounds may still grow the heap (measured: settled by the 7th in 25 runs of 20).
_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import torch
    from llmforge.adapters.custom import CustomTransformerAdapter
    from llmforge.config import TrainingConfig
    from llmforge.modeling.tokenizers import CharTokenizer
    from llmforge.modeling.transformer import Transformer, TransformerConfig
    from llmforge.training.speed import apply_speed_settings

    how = sys.argv[1]
    if how != "untouched":
        tok = CharTokenizer(list("ab"))
        model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_layers=1,
                            d_model=8, n_heads=2, block_size=8))
        cfg = TrainingConfig(reuse_freed_memory=how == "on")
        apply_speed_settings(cfg, CustomTransformerAdapter(model, tok))

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    n = 64 * 2**20  # fp32 elements: 256 MiB, far above glibc's mmap threshold
    counts = []
    for _ in range(20):
        before = faults()
        t = torch.ones(n)
        small = [torch.zeros(i + 1) for i in range(50)]  # other blocks come and go meanwhile
        del t, small
        counts.append(faults() - before)
    print(sum(counts[10:]))
    """
)


def _faults_of_later_allocations(how: str) -> int:
    p = subprocess.run(
        [sys.executable, "-c", _FAULTS, how], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_block_is_reused_by_the_next_allocation_with_the_setting_on() -> None:
    pages = 256 * 2**20 // 4096
    untouched = _faults_of_later_allocations("untouched")
    off = _faults_of_later_allocations("off")
    on = _faults_of_later_allocations("on")
    # glibc's default: each freed block was unmapped, so every allocation faults its pages in
    # again (the control: without it the test would not know the setting made the difference).
    assert untouched > 5 * pages and off > 5 * pages
    assert on < pages  # less than one allocation's pages over ten


def _model_and_grads(seed: int, scale: float) -> tuple[list[torch.nn.Parameter], list]:
    torch.manual_seed(seed)
    shapes = [(64, 32), (32,), (300, 32)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    grads = [torch.randn(s) * scale for s in shapes]
    return params, grads


def _bf16_run(
    clip_with_torch: bool, scale: float, max_norm: float
) -> tuple[list[torch.Tensor], float]:
    """Two steps of bf16 params + fp32 masters; return the masters and the last norm."""
    params, grads = _model_and_grads(0, scale)
    masters = to_low_precision(params)
    opt = MasterWeightOptimizer(params, masters, torch.optim.AdamW(masters, lr=1e-2, fused=True))
    norm = 0.0
    for step in range(2):
        for p, g in zip(params, grads, strict=True):
            p.grad = (g * (step + 1)).to(p.dtype)
        if clip_with_torch:
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        else:
            norm = clip_gradients(params, max_norm, opt)
        opt.step()
        opt.zero_grad()
    return [m.clone() for m in masters], norm


@pytest.mark.parametrize(("scale", "max_norm"), [(10.0, 1.0), (1e-3, 1.0), (10.0, float("inf"))])
def test_clipping_in_the_masters_conversion_equals_clip_grad_norm(
    scale: float, max_norm: float
) -> None:
    ours, our_norm = _bf16_run(False, scale, max_norm)
    ref, ref_norm = _bf16_run(True, scale, max_norm)
    assert our_norm == ref_norm
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    if scale == 10.0 and max_norm == 1.0:  # the clipping did happen, and made a difference
        unclipped, _ = _bf16_run(False, scale, float("inf"))
        assert not torch.equal(ours[0], unclipped[0])


@pytest.mark.parametrize("scale", [10.0, 1e-3])
def test_clipping_an_fp32_optimizer_scales_the_gradients_in_place_as_before(scale: float) -> None:
    params, grads = _model_and_grads(1, scale)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, t, g in zip(params, twins, grads, strict=True):
        p.grad, t.grad = g.clone(), g.clone()
    opt = torch.optim.AdamW(params, lr=1e-2)
    norm = clip_gradients(params, 1.0, opt)
    ref = float(torch.nn.utils.clip_grad_norm_(twins, 1.0))
    assert norm == ref
    for p, t in zip(params, twins, strict=True):
        assert torch.equal(p.grad, t.grad)


def test_a_non_finite_norm_is_returned_and_nothing_is_scaled() -> None:
    params, grads = _model_and_grads(2, 1.0)
    grads[0][0, 0] = float("nan")
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    masters = to_low_precision([torch.nn.Parameter(p.detach().clone()) for p in params])
    opt = torch.optim.AdamW(masters, lr=1e-2)
    assert torch.isnan(torch.tensor(clip_gradients(params, 1.0, opt)))
    assert torch.equal(params[1].grad, grads[1])


def test_a_pending_clip_factor_does_not_outlive_a_skipped_step() -> None:
    # A step skipped for a non-finite loss ends in zero_grad: the factor set for it must not
    # scale the next step's gradients.
    params, grads = _model_and_grads(3, 10.0)
    masters = to_low_precision(params)
    opt = MasterWeightOptimizer(params, masters, torch.optim.AdamW(masters, lr=1e-2, fused=True))
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(p.dtype)
    clip_gradients(params, 1.0, opt)
    opt.zero_grad()
    assert opt._grad_factor is None
    before = [m.clone() for m in masters]
    ref = [m.clone().requires_grad_() for m in before]
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, fused=True)
    for p, r, g in zip(params, ref, grads, strict=True):
        p.grad = (g * 1e-3).to(p.dtype)
        r.grad = p.grad.float()
    opt.step()
    ref_opt.step()
    for m, r in zip(masters, ref, strict=True):
        assert torch.equal(m, r.detach())
