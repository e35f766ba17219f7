"""The groups of config keys the rest of llmforge relies on, and the ``lora:`` section.

Kept apart from :mod:`llmforge.config.training_config` (which holds every key of
``TrainingConfig``) for size: these are read by resume, new runs and the trackers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Keys that only shape the from-scratch Transformer; a registry model's own config wins.
# (block_size is not among them: it is the training sequence length for every model.)
ARCHITECTURE_KEYS = ("n_layers", "d_model", "n_heads", "dropout")

# Keys that may differ when a run is resumed without changing what it computes.
RESUMABLE_KEYS = (
    "max_steps",
    "eval_interval",
    "eval_steps",
    "sample_interval",
    "sample_tokens",
    "save_interval",
    "keep_last",
    "log_interval",
    "threads",
    "reuse_freed_memory",
    "memory_limit_gb",
    "device",
    "dist_timeout",
    "schedule_on_extend",
    "report_to",
)

# The experiment trackers ``report_to`` may name (llmforge/tracking/reporting.py runs them).
TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")


class LoraSettings(BaseModel):
    """The ``lora:`` section: the low-rank adapters that ``finetune: lora`` trains."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    r: int = Field(default=8, ge=1, le=4096, description="Rank of the update matrices.")
    alpha: float = Field(default=16.0, gt=0.0, description="Scale: updates are x alpha / r.")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on LoRA inputs.")
    target_modules: list[str] | None = Field(
        default=None,
        description="Module names to adapt; None = the architecture's default (for Qwen the "
        "attention and MLP projections).",
    )

    @model_validator(mode="after")
    def _targets(self) -> LoraSettings:
        if self.target_modules is not None and (
            not self.target_modules
            or not all(isinstance(t, str) and t for t in self.target_modules)
        ):
            raise ValueError("target_modules must be a non-empty list of module names, or null")
        return self
