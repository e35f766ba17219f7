"""The model and optimizer of a run, placed on its device and wrapped for its strategy.

- one process: the model as it is;
- ``ddp``: ``DistributedDataParallel``: every rank holds the whole model and gradients are
  averaged across ranks during backward (in buckets, overlapping the computation);
- ``fsdp``: FSDP2 (``fully_shard``): each repeated block (a decoder layer) and the rest of the
  model are sharded across ranks; a block's parameters are gathered only while it runs, and
  gradients are reduce-scattered, so parameters, gradients and optimizer state each take
  ``1 / world_size`` of the memory per rank.

Both wrap :class:`LossModule` (token ids in, loss out) rather than the bare model, so the
wrapper's hooks enclose the adapter's whole training forward, including the fused LM-head
loss that reads the head's weight directly.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from typing import Any

import torch

from llmforge.adapters.base import ModelAdapter
from llmforge.config import TrainingConfig
from llmforge.training.distributed import DistContext
from llmforge.training.optim import build_optimizer
from llmforge.training.speed import apply_speed_settings


class LossModule(torch.nn.Module):
    """The training forward of an adapter as one module: ``(x, y[, position_ids]) -> loss``.

    Args:
        adapter: Its ``model`` becomes this module's only child.
    """

    def __init__(self, adapter: ModelAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._adapter = [adapter]  # in a list: not a submodule, and not a second path to it

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, T) each
        if position_ids is None:  # padded batches: any adapter's forward(x, y)
            _, loss = self._adapter[0].forward(x, y)
        else:  # packed rows (data/packing.py): only adapters that support_packing get them
            _, loss = self._adapter[0].forward(x, y, position_ids=position_ids)
        return loss


def setup_training(
    adapter: ModelAdapter, cfg: TrainingConfig, dist: DistContext
) -> tuple[torch.nn.Module, Any]:
    """Place, wrap and build: the module to train through, and the optimizer.

    The order matters: DDP allocates its gradient buckets in the parameters' dtype, so bf16
    parameters are cast (by :func:`build_optimizer`) before wrapping; FSDP replaces the
    parameters by shards, so the optimizer is built after sharding, over the shards, and bf16
    compute comes from FSDP's mixed-precision policy (fp32 shards are the master weights).
    """
    apply_speed_settings(cfg, adapter)
    adapter.model.to(dist.device)
    module = LossModule(adapter)
    if dist.strategy == "fsdp":
        _fully_shard(adapter, module, cfg, dist)
        return module, build_optimizer(adapter, cfg, low_precision=False)
    optimizer = build_optimizer(adapter, cfg)
    if dist.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.device.index] if dist.device.type == "cuda" else None
        # Buffers (rotary tables, masks) are computed identically on every rank; broadcasting
        # them before each forward would only add a collective per call. (torch >= 2.12
        # names that forward_sync_buffers and deprecates broadcast_buffers.)
        params = inspect.signature(DistributedDataParallel).parameters
        key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        module = DistributedDataParallel(module, device_ids=ids, **{key: False})
    return module, optimizer


def _fully_shard(
    adapter: ModelAdapter, module: LossModule, cfg: TrainingConfig, dist: DistContext
) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6 keeps FSDP2 under _composable
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if cfg.bf16_params
        else MixedPrecisionPolicy()
    )
    # FSDP2 warns when a block returns a view, since an in-place op on it would skip a
    # gather. The blocks' key/value outputs are views (split heads) that nothing modifies in
    # place (the KV cache concatenates), so the warning says nothing about llmforge's models.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for unit in adapter.shard_units():
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)  # the rest: embeddings, final norm, head


def no_sync(module: torch.nn.Module, last_micro: bool) -> Any:
    """A context for one micro-batch's backward: gradients are synchronised on the last only.

    DDP skips its all-reduce inside ``no_sync()``; FSDP keeps unsharded gradients until the
    last micro-batch. Either way the result equals synchronising every time.
    """
    if hasattr(module, "no_sync"):  # DDP
        return contextlib.nullcontext() if last_micro else module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(last_micro)
    return contextlib.nullcontext()


def full_value(t: Any) -> float:
    """A scalar that may be a DTensor (FSDP's gradient norm) as a float."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float, optimizer: Any) -> float:
    """``clip_grad_norm_``, without a pass over the gradients that changes nothing.

    ``clip_grad_norm_`` multiplies every gradient by ``min(1, max_norm / norm)``: a read and
    a write of all of them (0.24 s of a 3 s step at the Qwen2-0.5B shape on a CPU), even
    when the factor is exactly 1. Here the norm comes first; the gradients are scaled only
    when the factor is below 1, and then by the optimizer's own conversion pass when it has
    one (``scale_gradients``: the fp32 master weights' optimizer), else in place as before.

    Args:
        params: The trainable parameters (their ``.grad``, plain tensors or DTensors).
        max_norm: The largest total 2-norm allowed (``inf``: never clip).
        optimizer: The optimizer about to step.

    Returns:
        The total norm before clipping (NaN or inf when a gradient is not finite).
    """
    utils = torch.nn.utils
    if not hasattr(utils, "get_total_norm"):  # torch < 2.6: no separate norm
        return full_value(utils.clip_grad_norm_(params, max_norm))
    grads = [p.grad for p in params if p.grad is not None]
    total = utils.get_total_norm(grads)
    norm = full_value(total)
    if not math.isfinite(norm):
        return norm  # the step is skipped: nothing to scale
    # clip_grads_with_norm_'s own factor, in the norm's dtype, clamped to 1 as it clamps it.
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if full_value(factor) < 1.0:
        if hasattr(optimizer, "scale_gradients") and not hasattr(factor, "full_tensor"):
            optimizer.scale_gradients(factor)
        else:
            utils.clip_grads_with_norm_(params, max_norm, total)
    return norm
