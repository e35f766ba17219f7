"""Estimate a run's peak memory before it starts, and refuse runs that cannot fit.

The estimate adds up what full fine-tuning with AdamW holds at its peak (the end of the
backward pass of a micro-batch):

- weights: every parameter, in the model's dtype (bf16 with ``param_dtype: bf16``);
- fp32 master weights (bf16 parameters only);
- gradients of the trainable parameters, in the parameters' dtype;
- AdamW's two fp32 moments per trainable parameter;
- activations kept for backward at the configured micro-batch: per token and layer about
  ``34 x d + 5 x heads x T`` bytes at 16 bits (Korthikanti et al., 2022), twice that in fp32;
  with gradient checkpointing only each layer's input plus one layer's working set;
- the logits: (tokens x vocab) in bf16 and fp32, their log-softmax and gradient; with the
  fused loss only one chunk of them;
- a fixed overhead for the interpreter, torch and the data (about 0.6 GB).

It is deliberately a little pessimistic: refusing a run that would have fit by a few percent
costs the user a flag; dying an hour into a run costs the hour.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from llmforge.config import TrainingConfig
from llmforge.errors import TrainingError
from llmforge.fsutil import human_bytes
from llmforge.modeling.model_size import ModelShape, memory_available

OVERHEAD_BYTES = 600 * 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a run's peak memory."""

    weights: int
    master_weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    tokens_per_step: int
    tokens_per_micro_batch: int
    processes: int = 1

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.master_weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.overhead
        )

    def parts_text(self) -> str:
        """The parts of the estimate, largest first where it matters: ``weights 1.2 GB, ...``."""
        return ", ".join(self._parts())

    def _parts(self) -> list[str]:
        h = human_bytes
        return [
            f"weights {h(self.weights)}",
            *([f"fp32 master weights {h(self.master_weights)}"] if self.master_weights else []),
            f"gradients {h(self.gradients)}",
            f"optimizer state {h(self.optimizer)}",
            f"activations {h(self.activations)}",
            f"logits/loss {h(self.logits)}",
            f"overhead {h(self.overhead)}",
        ]

    def lines(self) -> list[str]:
        """The start-up log lines."""
        h = human_bytes
        parts = self._parts()
        if self.processes > 1:
            return [
                f"Memory estimate per process: about {h(self.total)} at peak "
                f"({', '.join(parts)}); {self.tokens_per_micro_batch:,} tokens per micro-batch, "
                f"{self.tokens_per_step:,} tokens per step per process "
                f"({self.tokens_per_step * self.processes:,} for the job)."
            ]
        return [
            f"Memory estimate: about {h(self.total)} at peak ({', '.join(parts)}); "
            f"{self.tokens_per_micro_batch:,} tokens per micro-batch, "
            f"{self.tokens_per_step:,} tokens per step."
        ]


def _shape(describe: dict[str, Any]) -> tuple[int, int, int, int]:
    layers = int(describe.get("n_layers") or 1)
    width = int(describe.get("hidden_size") or describe.get("d_model") or 1)
    heads = int(describe.get("n_heads") or 1)
    vocab = int(describe.get("vocab_size") or 1)
    return layers, width, heads, vocab


def estimate_memory(
    cfg: TrainingConfig,
    *,
    parameters: int,
    trainable: int,
    describe: dict[str, Any],
    block_size: int | None = None,
    processes: int = 1,
    sharded: bool = False,
) -> MemoryEstimate:
    """The estimated peak memory of training ``cfg`` on a model of this size and shape.

    Args:
        cfg: The run's config (micro-batch, precision, param_dtype, fused_loss, ...).
        parameters: All parameters of the model (tied weights once).
        trainable: The trainable ones.
        describe: The adapter's ``describe()`` (layers, width, heads, vocabulary).
        block_size: The training sequence length (default: ``cfg.block_size``).
        processes: Processes of the job (the estimate is per process).
        sharded: FSDP: weights, gradients and optimizer state are split over the processes.
    """
    T = block_size or cfg.block_size
    B = cfg.batch_size
    layers, width, heads, vocab = _shape(describe)
    p_bytes = 2 if cfg.bf16_params else 4
    act_bytes = 2 if cfg.precision == "bf16" else 4
    per_token_layer = (34 * width + 5 * heads * T) * act_bytes // 2
    if cfg.gradient_checkpointing:
        activations = B * T * (layers * width * act_bytes + per_token_layer)
    else:
        activations = B * T * layers * per_token_layer
    if cfg.fused_loss:
        rows = min(B * T, cfg.loss_chunk)
        logits = rows * vocab * 4 * 3 + B * T * width * 4 * 2
    else:
        logits = B * T * vocab * (act_bytes + 4 + 4 + 4)
    share = processes if sharded else 1
    return MemoryEstimate(
        weights=parameters * p_bytes // share,
        master_weights=(trainable * 4 if cfg.bf16_params else 0) // share,
        gradients=trainable * p_bytes // share,
        optimizer=trainable * 8 // share,
        activations=activations,
        logits=logits,
        overhead=OVERHEAD_BYTES,
        tokens_per_step=B * T * cfg.grad_accum_steps,
        tokens_per_micro_batch=B * T,
        processes=processes,
    )


def custom_shape(cfg: TrainingConfig, vocab_size: int) -> ModelShape:
    """The from-scratch Transformer that ``cfg`` describes (exact: embeddings, 12 d^2 + 4 d
    per block, tied LM head)."""
    d, layers = cfg.d_model, cfg.n_layers
    params = vocab_size * d + cfg.block_size * d + layers * (12 * d * d + 4 * d) + 2 * d
    return ModelShape(
        params,
        params,
        {"n_layers": layers, "d_model": d, "n_heads": cfg.n_heads, "vocab_size": vocab_size},
    )


def job_sharers() -> int:
    """Processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 alone)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def precheck_memory(
    cfg: TrainingConfig,
    shape: ModelShape | None,
    *,
    block_size: int | None = None,
    processes: int = 1,
    sharded: bool = False,
) -> None:
    """Refuse a run whose model cannot fit before it is built (or its weights are loaded):
    a config claiming 400 billion parameters must not reach the allocator.

    Raises:
        TrainingError: With the estimate, the memory available and what would help.
    """
    if shape is None:
        return
    est = estimate_memory(
        cfg,
        parameters=shape.parameters,
        trainable=shape.trainable,
        describe=shape.describe,
        block_size=block_size,
        processes=processes,
        sharded=sharded,
    )
    cpu = cfg.device == "cpu" or not _cuda_visible()
    check_memory(est, cfg, sharers=job_sharers() if cpu else 1, before_build=True)


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def available_memory(cfg: TrainingConfig) -> int:
    """Bytes the run may use: ``memory_limit_gb``, else what the machine has available now.

    ``MemAvailable`` excludes this process's own pages, so what the process already holds
    (the loaded weights) is added back.
    """
    if cfg.memory_limit_gb is not None:
        return int(cfg.memory_limit_gb * 2**30)
    return memory_available()


def check_memory(
    est: MemoryEstimate, cfg: TrainingConfig, *, sharers: int = 1, before_build: bool = False
) -> None:
    """Refuse a run whose estimate exceeds the memory available to it.

    Args:
        est: The estimate for one process.
        cfg: The run's config (``memory_limit_gb``, and the levers to suggest).
        sharers: Processes of the job on this machine, each needing ``est`` of its memory.
        before_build: The estimate comes from the model's config (nothing was built yet).

    Raises:
        TrainingError: With what would help, most effective first.
    """
    avail = available_memory(cfg)
    if avail:
        avail //= sharers
    if not avail or est.total <= avail:
        return
    tips = []
    if cfg.batch_size > 1:
        half = max(1, cfg.batch_size // 2)
        tips.append(
            f"a smaller micro-batch with more accumulation (--set batch_size={half} "
            f"--set grad_accum_steps={cfg.grad_accum_steps * 2}: the same tokens per step)"
        )
    if cfg.precision != "bf16":
        tips.append("precision: bf16 (bf16 activations; with param_dtype auto, bf16 weights)")
    if not cfg.gradient_checkpointing:
        tips.append("gradient_checkpointing: true (recomputes activations in backward)")
    if not cfg.fused_loss:
        tips.append("fused_loss: true (no full logits)")
    tips.append("a shorter block_size, or a smaller model")
    where = "memory_limit_gb" if cfg.memory_limit_gb is not None else "available memory"
    if sharers > 1:
        where += f", shared by the {sharers} processes on this machine"
        if cfg.strategy != "fsdp":
            tips.insert(0, "strategy: fsdp (each process holds 1/N of the weights and state)")
    when = (
        "; the model was not built (the estimate comes from its config)"
        if before_build
        else "; it would die mid-run"
    )
    raise TrainingError(
        f"This run needs about {human_bytes(est.total)} of memory at peak "
        f"({est.parts_text()}), but only {human_bytes(avail)} is available ({where}){when}. "
        "Nothing was written.",
        "Try " + "; or ".join(tips) + ". `llmforge train CONFIG --dry-run` prints the estimate.",
    )
