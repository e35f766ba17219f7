"""bf16 parameters with fp32 master weights.

The model's parameters (and so its gradients and every matmul) are bf16; the optimizer keeps
an fp32 copy of each (the master weights) with fp32 moments, updates those and writes the
rounded result back into the model. Without the masters, updates smaller than a bf16 ulp
(about 0.4% of the weight) are simply lost and the loss drifts away from an fp32 run's.

:class:`MasterWeightOptimizer` behaves like the ``torch.optim.Optimizer`` it wraps for the
trainer and the checkpoint code: ``param_groups`` (the learning rate is set there),
``step()``, ``zero_grad()``, ``state_dict()`` (with the masters, so a resume is exact) and
``load_state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

MASTER_KEY = "master_weights"


class MasterWeightOptimizer:
    """An optimizer over fp32 copies of low-precision model parameters.

    Args:
        params: The model's parameters, already in their low-precision dtype, in the order the
            masters were built.
        masters: fp32 tensors, one per parameter (the inner optimizer's parameters).
        inner: The optimizer built over ``masters``.
    """

    def __init__(
        self, params: list[torch.nn.Parameter], masters: list[torch.Tensor], inner: Any
    ) -> None:
        self.params = params
        self.masters = masters
        self.inner = inner
        # One fp32 gradient buffer, the size of the largest parameter, reused by every
        # parameter of every step: a fresh 0.5 GB tensor per step (the 151k-vocabulary
        # embedding) was a fresh set of pages for the kernel to fault in and zero.
        self._grad_buffer: torch.Tensor | None = None
        self._grad_factor: torch.Tensor | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    @property
    def state(self) -> Any:
        return self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._grad_factor = None
        for p in self.params:
            p.grad = None

    def scale_gradients(self, factor: torch.Tensor) -> None:
        """Multiply every gradient by ``factor`` (gradient clipping) in the next :meth:`step`.

        The product is formed as each bf16 gradient is converted to fp32, a pass the step makes
        anyway, instead of a separate read and write of every gradient beforehand.

        Args:
            factor: A 0-dim tensor (``clip_grad_norm_``'s clamped coefficient).
        """
        self._grad_factor = factor

    def _fp32_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` (times the pending factor) in fp32, in the shared buffer."""
        buf = self._grad_buffer
        if buf is None or buf.device != grad.device:  # sized once, for the largest
            biggest = max(p.numel() for p in self.params)
            buf = self._grad_buffer = torch.empty(biggest, dtype=torch.float32, device=grad.device)
        out = buf[: grad.numel()].view(grad.shape)
        if self._grad_factor is None:
            return out.copy_(grad)
        # grad * factor in grad's dtype, as clip_grads_with_norm_ would leave it, then fp32.
        return torch.mul(grad, self._grad_factor.to(grad.device), out=out)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:
        """Update one parameter at a time, so at most one fp32 gradient exists at once.

        The inner optimizer only touches parameters that have a gradient, so giving it one
        at a time is the same update as one call over all of them, while each bf16 gradient
        is freed as soon as it is used: peak memory stays that of an fp32 model's weights,
        gradients and moments, plus one fp32 buffer the size of the largest parameter.
        """
        for p, m in zip(self.params, self.masters, strict=True):
            if p.grad is None:
                continue
            m.grad = self._fp32_grad(p.grad)
            p.grad = None
            self.inner.step()
            m.grad = None
            p.copy_(m)  # round the new weight to the model's dtype
        self._grad_factor = None

    def state_dict(self) -> dict[str, Any]:
        sd = dict(self.inner.state_dict())
        sd[MASTER_KEY] = {i: m for i, m in enumerate(self.masters)}
        return sd

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        masters = sd.pop(MASTER_KEY, None)
        if masters is None:
            raise ValueError(
                "the optimizer state holds no fp32 master weights (the run was saved with "
                "param_dtype fp32)"
            )
        if len(masters) != len(self.masters):
            raise ValueError(f"{len(masters)} master weights for {len(self.masters)} parameters")
        for i, m in enumerate(self.masters):
            src = masters[i]
            if src.shape != m.shape:
                raise ValueError(f"master weight {i} has shape {tuple(src.shape)}")
            m.copy_(src)
        self.inner.load_state_dict(sd)
        torch._foreach_copy_(self.params, self.masters)


def to_low_precision(
    params: list[torch.nn.Parameter],
    dtype: torch.dtype = torch.bfloat16,
    *,
    keep_masters: bool = True,
) -> list[torch.Tensor]:
    """Cast ``params`` in place to ``dtype``; return their fp32 masters (in order).

    Tied parameters are one ``Parameter`` object, so casting it once casts every use.
    With ``keep_masters=False`` (frozen parameters) no masters are kept and ``[]`` is returned.
    """
    masters = []
    with torch.no_grad():
        for p in params:
            if keep_masters:
                masters.append(p.detach().to(torch.float32).clone())
            p.data = p.data.to(dtype)
    return masters
