"""``TrainingConfig``: every knob of a training run, loaded from YAML with CLI overrides.

Unknown keys are rejected, every field has a default (no config file means sensible
defaults), and a bad file produces one ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from llmforge.config.defaults import (
    DEFAULT_WARMUP,
    MAX_SEED,
    fill_defaults,
    kind_of,
    run_name_problem,
)
from llmforge.config.reading import config_error, read_yaml, short_text
from llmforge.config.sections import (  # noqa: F401 -- re-exported through llmforge.config
    ARCHITECTURE_KEYS,
    RESUMABLE_KEYS,
    TRACKERS,
    LoraSettings,
)
from llmforge.errors import ConfigError
from llmforge.untrusted import brief


class TrainingConfig(BaseModel):
    """The resolved configuration of one training run.

    ``learning_rate``, ``min_lr``, ``weight_decay`` and ``warmup_steps`` default by what is
    trained (:data:`KIND_DEFAULTS`); :attr:`chosen_defaults` says which were chosen so, and
    ``model_fields_set`` holds only the keys the user set.
    """

    # No inf or NaN anywhere: `memory_limit_gb: .inf` or `dist_timeout: .nan` would crash later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _chosen_defaults: dict[str, str] = PrivateAttr(default_factory=dict)
    _notes: list[str] = PrivateAttr(default_factory=list)

    # -- which model -----------------------------------------------------------------
    model_name: str | None = Field(
        default=None, description="Registry model to fine-tune; None = the custom Transformer."
    )
    tokenizer_override: str | None = Field(
        default=None, description="Registry model name or tokenizer folder to use instead."
    )

    finetune: Literal["full", "lora"] = Field(
        default="full",
        description="full: train every weight; lora: train low-rank adapters on a frozen base "
        "(registry models only).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)

    # -- the from-scratch Transformer (ignored for registry models) -------------------
    n_layers: int = Field(default=4, ge=1, le=128)
    d_model: int = Field(default=256, ge=8, le=16384)
    n_heads: int = Field(default=4, ge=1, le=256)
    block_size: int = Field(default=128, ge=2, le=131072)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)

    # -- data -------------------------------------------------------------------------
    data_path: str | None = Field(
        default=None,
        description="Text file (.txt) or records (.jsonl, .json, .csv, .parquet); "
        "None = the built-in corpus.",
    )
    data_format: Literal["auto", "text", "jsonl-text", "prompt-completion", "chat"] = Field(
        default="auto", description="auto: from the file's extension and first record."
    )
    val_data_path: str | None = Field(
        default=None, description="Validation file (same format); None = val_fraction of data."
    )
    val_fraction: float = Field(default=0.1, gt=0.0, le=0.5)
    train_on_prompt: bool = Field(
        default=False, description="Also train on prompt / user tokens (default: answers only)."
    )
    skip_bad_lines: bool = Field(
        default=False, description="Skip malformed records (counted) instead of failing."
    )
    packing: bool = Field(
        default=True,
        description="Chat / prompt-completion data: pack each micro-batch's examples into "
        "rows of up to block_size tokens (attention and positions kept per example) instead "
        "of padding each to the longest; off where the model path cannot (text: no effect).",
    )
    chat_template: str | None = Field(
        default=None,
        description="None = the model's own, else ChatML; 'chatml'; a Jinja template or "
        "a .jinja file.",
    )
    data_split: str = Field(
        default="train",
        pattern=r"^[\w.-]{1,200}$",
        description="Hub datasets (data_path: hf://datasets/ORG/NAME): the split trained on.",
    )
    val_split: str | None = Field(
        default=None,
        pattern=r"^[\w.-]{1,200}$",
        description="Hub datasets: a split for validation (e.g. test); None = val_fraction.",
    )
    data_config: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Hub datasets: the config (subset) name; None = the default one.",
    )
    data_columns: dict[str, str] | None = Field(
        default=None,
        description="Hub datasets: llmforge field -> dataset column, e.g. "
        "{prompt: question, completion: answer}.",
    )

    # -- optimisation -----------------------------------------------------------------
    learning_rate: float = Field(
        default=2e-3,
        gt=0.0,
        le=1000.0,
        description="Default: 2e-3 from scratch, 2e-5 for a full fine-tune, 2e-4 for LoRA.",
    )
    min_lr: float = Field(
        default=2e-4, ge=0.0, description="End of the cosine decay; default: learning_rate / 10."
    )
    warmup_steps: int = Field(
        default=DEFAULT_WARMUP,
        ge=0,
        le=10**9,
        description="Default: 30 from scratch, 10 for fine-tunes, at most a tenth of max_steps; "
        "one not below max_steps is capped (with a warning).",
    )
    weight_decay: float = Field(
        default=0.1,
        ge=0.0,
        le=100.0,
        description="Default: 0.1 from scratch, 0.0 for fine-tunes (full or LoRA).",
    )
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.99, ge=0.0, lt=1.0)
    grad_clip: float = Field(default=1.0, ge=0.0, description="0 disables clipping.")
    batch_size: int = Field(default=16, ge=1, le=65536, description="Sequences per micro-batch.")
    grad_accum_steps: int = Field(default=1, ge=1, le=65536)
    max_steps: int = Field(
        default=300, ge=1, le=10**9, description="Optimizer steps of the whole run."
    )
    schedule_on_extend: Literal["continue", "rewarm", "replan"] = Field(
        default="continue",
        description="When a resume changes max_steps: continue = keep the planned schedule and "
        "run added steps at its final lr; rewarm = a new warmup + cosine over the added steps; "
        "replan = stretch the cosine over the new max_steps (the lr jumps).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto: bf16 (with fp32 master weights) where the device computes bf16 "
        "faster than fp32 (a GPU with bf16; a CPU with AVX512-BF16 or AMX whose bf16 matmuls "
        "measure at least 1.5x the fp32 rate), else fp32. The resolved value is recorded in "
        "the run.",
    )
    nonfinite_loss: Literal["stop", "skip"] = Field(
        default="stop", description="On a NaN/inf loss: stop, or skip the step (no update)."
    )
    max_consecutive_skips: int = Field(default=10, ge=1)
    seed: int = Field(default=1337, ge=0, le=MAX_SEED)

    # -- speed and memory (benchmarks/README.md has the measured effect of each) ------
    fused_loss: bool = Field(
        default=True,
        description="LM head + cross-entropy in chunks, never the full fp32 logits.",
    )
    loss_chunk: int = Field(default=1024, ge=1, description="Tokens per fused-loss chunk.")
    param_dtype: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="bf16: bf16 parameters with fp32 master weights in the optimizer; "
        "auto = bf16 when precision is bf16.",
    )
    optimizer_impl: Literal["foreach", "fused"] = Field(
        default="fused",
        description="AdamW kernel: fused (one pass per tensor; ~6x faster on CPU) or foreach.",
    )
    compile: bool = Field(
        default=False, description="torch.compile the model (slow first step; opt-in)."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: less memory, slower."
    )
    threads: int = Field(
        default=0, ge=0, le=1024, description="torch threads; 0 = torch's default."
    )
    reuse_freed_memory: bool = Field(
        default=True,
        description="Keep memory a step frees for the next step (glibc's malloc: no mmap per "
        "large block, no trimming) instead of faulting it in again; Linux only.",
    )
    memory_limit_gb: float | None = Field(
        default=None,
        gt=0.0,
        le=2.0**20,
        description="Memory the run may use; None = the machine's available memory.",
    )

    # -- devices and processes (docs/distributed.md) ---------------------------------
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: a CUDA GPU when one is available, else the CPU."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="With several processes (torchrun, or train --nproc N): ddp keeps a "
        "whole copy of the model per process and averages gradients; fsdp (FSDP2) shards "
        "parameters, gradients and optimizer state across processes.",
    )
    dist_timeout: float = Field(
        default=300.0,
        gt=0.0,
        le=7 * 86400.0,
        description="Seconds a process waits for the others before the job stops with an "
        "error (a process that died or hangs).",
    )

    # -- evaluation, samples, checkpoints ---------------------------------------------
    log_interval: int = Field(default=10, ge=1)
    eval_interval: int = Field(default=50, ge=1)
    eval_steps: int = Field(
        default=10, ge=1, le=100_000, description="Validation batches per evaluation."
    )
    sample_interval: int = Field(default=100, ge=0, description="0 disables samples.")
    sample_tokens: int = Field(default=120, ge=1, le=100_000)
    save_interval: int = Field(default=100, ge=1)
    keep_last: int = Field(default=3, ge=1)
    output_dir: str = Field(default="runs", description="Relative to the workspace.")
    run_name: str | None = Field(
        default=None, description="Folder under output_dir; default: the config file's name."
    )
    report_to: list[Literal["tensorboard", "trackio", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers that get every metric and the config: tensorboard "
        "(runs/RUN/tensorboard/), trackio, wandb (offline unless WANDB_MODE), mlflow; none by "
        "default. Each needs its package (docs/runs.md).",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        # The transformers convention: one name, "none", a comma list or a YAML list.
        if value is None:
            return []
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            names = [v.strip() if isinstance(v, str) else v for v in value]
            return list(dict.fromkeys(n for n in names if n != "none"))
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _defaults_by_kind(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Unset optimisation keys take the defaults of what is trained, and a warmup that does
        # not fit the run is capped; the keys chosen here do not count as set by the user.
        if not isinstance(data, dict):
            return handler(data)  # validating an assignment: nothing is chosen anew
        data, chosen, notes = fill_defaults(data)
        inst = handler(data)
        inst.__pydantic_fields_set__.difference_update(chosen)
        inst._chosen_defaults = chosen
        inst._notes = notes
        return inst

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.min_lr > self.learning_rate:
            raise ValueError(
                f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})"
            )
        if self.model_name is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.finetune == "lora" and self.model_name is None:
            raise ValueError(
                "finetune: lora needs a registry model to attach to (model_name); the "
                "from-scratch Transformer is trained with finetune: full"
            )
        if self.strategy == "fsdp" and self.finetune == "lora":
            raise ValueError(
                "strategy: fsdp does not shard LoRA runs (LoRA checkpoints hold only the "
                "adapter); use strategy: ddp for LoRA: each process holds the frozen base and "
                "only the adapter's gradients are averaged"
            )
        if self.param_dtype == "bf16" and self.precision == "fp32":
            raise ValueError("param_dtype bf16 needs precision: bf16 (or auto)")
        if self.run_name is not None:
            problem = run_name_problem(self.run_name)
            if problem:
                raise ValueError(f"run_name {brief(self.run_name, 60)} {problem}")
        return self

    def __eq__(self, other: object) -> bool:
        # The same values are the same config, however they were chosen.
        if not isinstance(other, TrainingConfig):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable (validate_assignment)

    @property
    def kind(self) -> str:
        """What is trained: ``from scratch``, ``full fine-tune`` or ``LoRA``."""
        return kind_of(self.model_name, self.finetune)

    @property
    def chosen_defaults(self) -> dict[str, str]:
        """Keys the user did not set whose value depends on what is trained, with the reason."""
        return dict(self._chosen_defaults)

    @property
    def notes(self) -> list[str]:
        """What validation changed and the user should hear (a capped warmup)."""
        return list(self._notes)

    def evolve(self, updates: dict[str, Any], *, chosen: dict[str, str] | None = None) -> Any:
        """A copy with ``updates`` applied (validated), keeping which keys the user set.

        Args:
            updates: Keys to change.
            chosen: Of those, the ones llmforge chose (not the user), with the reason; the
                others count as set.

        Raises:
            ConfigError: If the result is invalid.
        """
        new = TrainingConfig.from_dict({**self.to_dict(), **updates}, source="config")
        picked = {**self._chosen_defaults, **(chosen or {})}
        for key in set(updates) - set(chosen or {}):
            picked.pop(key, None)
        new.__pydantic_fields_set__ = (set(self.model_fields_set) | set(updates)) - set(picked)
        new._chosen_defaults = picked
        new._notes = list(self._notes)
        return new

    def user_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the keys whose defaults depend on what is trained (so that
        validating it again under another ``model_name`` chooses them anew)."""
        data = self.to_dict()
        for key in self._chosen_defaults:
            data.pop(key, None)
        return data

    @property
    def tokens_per_step(self) -> int:
        """Tokens that one optimizer step consumes."""
        return self.batch_size * self.grad_accum_steps * self.block_size

    @property
    def bf16_params(self) -> bool:
        """Whether the model's parameters are bf16 (with fp32 master weights)."""
        return self.param_dtype == "bf16" or (
            self.param_dtype == "auto" and self.precision == "bf16"
        )

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON/YAML types (``model_name`` included, None allowed)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainingConfig:
        """Build a config from a dict, as :meth:`to_dict` produces or a YAML file holds.

        Raises:
            ConfigError: Naming ``source`` and the offending key.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise config_error(e, source, list(TrainingConfig.model_fields)) from e


def load_config(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainingConfig:
    """Load a config: defaults, then the YAML file, then the overrides.

    Args:
        path: A YAML file, or None for defaults only.
        overrides: Keys set on the command line (``--set``, ``--max-steps``); they win.

    Returns:
        The validated config. ``run_name`` defaults to the file's stem.

    Raises:
        ConfigError: For a bad file, key or value (naming the file and the key).
    """
    data = read_yaml(path) if path is not None else {}
    source = short_text(str(path), 200) if path is not None else "default config"
    if overrides:
        source += " with command-line overrides"
        data = {**data, **overrides}
        for key in [k for k in data if "." in k]:  # --set lora.r=16 sets a nested key
            section, _, sub = key.partition(".")
            if isinstance(data.get(section, {}), dict):
                data[section] = {**data.get(section, {}), sub: data.pop(key)}
    if data.get("run_name") is None and path is not None:
        problem = run_name_problem(path.stem)
        if problem:
            raise ConfigError(
                f"The run is named after the config file, but {short_text(path.stem, 60)!r} "
                f"{problem}.",
                "Name the run with --run-name NAME (or run_name: NAME in the config).",
            )
        data["run_name"] = path.stem
    return TrainingConfig.from_dict(data, source=source)
