"""A fused LM-head + cross-entropy that never materialises the full (tokens x vocab) logits.

With a 151k-token vocabulary the logits of one 512-token sequence are 78M numbers; the usual
path keeps them in bf16, again in fp32 (``.float()``), their log-softmax, and the gradient of
each. :func:`fused_linear_cross_entropy` instead walks the tokens in chunks: for each chunk it
computes the logits, the loss and, straight away, the gradient of the loss with respect to the
logits (``softmax - one_hot``), folds it into the gradients of the hidden states and of the
head's weight, and drops the chunk. Backward then only scales those stored gradients, so no
matmul is recomputed (unlike a per-chunk ``torch.utils.checkpoint``) and peak memory holds one
chunk of logits instead of several full copies.

Under bf16 autocast the matmuls run in bf16 (as autocast would run the LM head), while the
softmax, the loss and the weight-gradient accumulation stay in fp32.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 1024
IGNORE_INDEX = -100


def _compute_dtype(dtype: torch.dtype, device_type: str) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,  # (N, C)
        weight: torch.Tensor,  # (V, C)
        labels: torch.Tensor,  # (N,)
        chunk: int,
        cdtype: torch.dtype,
    ) -> torch.Tensor:
        n = hidden.size(0)
        valid = labels != IGNORE_INDEX
        denom = max(int(valid.sum()), 1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        one_chunk = n <= chunk
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdtype)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = None
            if need_w and not one_chunk:
                grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, n, chunk):
                h = hidden[s : s + chunk]
                ok = valid[s : s + chunk]
                safe_y = torch.where(ok, labels[s : s + chunk], 0)[:, None]
                # One pass from the (bf16) matmul output to fp32 log-probabilities.
                logp = torch.log_softmax(h.to(cdtype) @ w.t(), dim=-1, dtype=torch.float32)
                total -= (logp.gather(1, safe_y).squeeze(1) * ok).sum()
                if not (need_h or need_w):
                    continue
                # d loss / d logits = (softmax - one_hot) / denom, zero for ignored rows;
                # the 1/denom is applied to the small (tokens x C) operands, not to g.
                g = logp.exp_()
                g.scatter_add_(1, safe_y, torch.full_like(safe_y, -1.0, dtype=g.dtype))
                if not bool(ok.all()):
                    g[~ok] = 0.0
                g = g.to(cdtype)
                del logp
                if need_h:
                    grad_h[s : s + chunk] = ((g @ w).float() / denom).to(hidden.dtype)
                if need_w:
                    hs = (h.float() / denom).to(cdtype)
                    if one_chunk:
                        grad_w = (g.t() @ hs).to(weight.dtype)
                    else:
                        grad_w += (g.t() @ hs).float()
        ctx.save_for_backward(
            grad_h if grad_h is not None else torch.empty(0),
            grad_w.to(weight.dtype) if grad_w is not None else torch.empty(0),
        )
        ctx.has = (need_h, need_w)
        return total / denom

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w = ctx.has
        gh = grad_h * grad_out.to(grad_h.dtype) if need_h else None
        gw = grad_w * grad_out.to(grad_w.dtype) if need_w else None
        return gh, gw, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` (ignore_index -100).

    Args:
        hidden: (..., C) final hidden states (after the last norm).
        weight: (V, C) the LM head (often tied to the input embedding).
        labels: (...) target ids, already aligned with ``hidden``; -100 is ignored.
        chunk: Tokens per chunk (peak memory ~ chunk x V x 4 bytes).

    Returns:
        The scalar loss, differentiable with respect to ``hidden`` and ``weight``.
    """
    c = hidden.size(-1)
    cdtype = _compute_dtype(weight.dtype, hidden.device.type)
    return _FusedLinearCE.apply(
        hidden.reshape(-1, c), weight, labels.reshape(-1), max(1, int(chunk)), cdtype
    )


CPU_HEAD_CHUNK = 128  # two (128 x 32k) fp32 buffers stay in a CPU's cache; 1024 rows did not


def head_chunk(device: torch.device) -> int:
    """Rows of logits per chunk for :func:`head_nll`: small on a CPU, large on a GPU."""
    return DEFAULT_CHUNK if device.type != "cpu" else CPU_HEAD_CHUNK


@torch.no_grad()
def head_nll(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Per-row NLL ``(N,)`` of ``targets`` under ``softmax(hidden @ weight.T)``, no gradient.

    The inference twin of :func:`fused_linear_cross_entropy` (``llmforge eval``): logits exist
    for one chunk of the selected rows only, never for all of them at once, and the softmax
    runs in fp32 whatever the matmul's dtype.

    Args:
        hidden: (N, C) final hidden states of the scored positions.
        weight: (V, C) the LM head.
        targets: (N,) target ids (no -100: only scored rows are passed).
        chunk: Rows per chunk (default: :func:`head_chunk` of the device).
    """
    chunk = max(1, int(chunk or head_chunk(hidden.device)))
    out = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)  # (N,)
    for s in range(0, hidden.size(0), chunk):
        logits = hidden[s : s + chunk].to(weight.dtype) @ weight.t()  # (chunk, V)
        out[s : s + chunk] = torch.nn.functional.cross_entropy(
            logits.float(), targets[s : s + chunk], reduction="none"
        )
    return out
