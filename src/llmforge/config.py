"""``TrainingConfig``: every knob of a training run, loaded from YAML with CLI overrides.

Unknown keys are rejected, every field has a default (no config file means sensible
defaults), and a bad file produces one ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmforge.errors import ConfigError
from llmforge.untrusted import UntrustedYAMLError, load_yaml

# Keys that only shape the from-scratch Transformer; a registry model's own config wins.
# (block_size is not among them: it is the training sequence length for every model.)
ARCHITECTURE_KEYS = ("n_layers", "d_model", "n_heads", "dropout")

DEFAULT_WARMUP = 30

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
    "memory_limit_gb",
    "device",
    "dist_timeout",
)


class LoraSettings(BaseModel):
    """The ``lora:`` section: the low-rank adapters that ``finetune: lora`` trains."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

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


class TrainingConfig(BaseModel):
    """The resolved configuration of one training run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

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
    chat_template: str | None = Field(
        default=None,
        description="None = the model's own, else ChatML; 'chatml'; a Jinja template or "
        "a .jinja file.",
    )

    # -- optimisation -----------------------------------------------------------------
    learning_rate: float = Field(default=2e-3, gt=0.0, le=1000.0)
    min_lr: float = Field(default=2e-4, ge=0.0)
    warmup_steps: int = Field(
        default=DEFAULT_WARMUP, ge=0, description="Default: 30, at most a tenth of max_steps."
    )
    weight_decay: float = Field(default=0.1, ge=0.0)
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.99, ge=0.0, lt=1.0)
    grad_clip: float = Field(default=1.0, ge=0.0, description="0 disables clipping.")
    batch_size: int = Field(default=16, ge=1, description="Sequences per micro-batch.")
    grad_accum_steps: int = Field(default=1, ge=1)
    max_steps: int = Field(default=300, ge=1, description="Optimizer steps of the whole run.")
    precision: Literal["fp32", "bf16"] = "fp32"
    nonfinite_loss: Literal["stop", "skip"] = Field(
        default="stop", description="On a NaN/inf loss: stop, or skip the step (no update)."
    )
    max_consecutive_skips: int = Field(default=10, ge=1)
    seed: int = Field(default=1337, ge=0)

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
    threads: int = Field(default=0, ge=0, description="torch threads; 0 = torch's default.")
    memory_limit_gb: float | None = Field(
        default=None,
        gt=0.0,
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
        description="Seconds a process waits for the others before the job stops with an "
        "error (a process that died or hangs).",
    )

    # -- evaluation, samples, checkpoints ---------------------------------------------
    log_interval: int = Field(default=10, ge=1)
    eval_interval: int = Field(default=50, ge=1)
    eval_steps: int = Field(default=10, ge=1, description="Validation batches per evaluation.")
    sample_interval: int = Field(default=100, ge=0, description="0 disables samples.")
    sample_tokens: int = Field(default=120, ge=1)
    save_interval: int = Field(default=100, ge=1)
    keep_last: int = Field(default=3, ge=1)
    output_dir: str = Field(default="runs", description="Relative to the workspace.")
    run_name: str | None = Field(
        default=None, description="Folder under output_dir; default: the config file's name."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_warmup(cls, data: Any) -> Any:
        # An unset warmup shrinks with short runs, so `--max-steps 20` works out of the box.
        if isinstance(data, dict) and data.get("warmup_steps") is None:
            steps = data.get("max_steps", 300)
            if isinstance(steps, int) and steps > 0:
                data = {**data, "warmup_steps": min(DEFAULT_WARMUP, steps // 10)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be smaller than max_steps "
                f"({self.max_steps})"
            )
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
        if self.param_dtype == "bf16" and self.precision != "bf16":
            raise ValueError("param_dtype bf16 needs precision: bf16")
        if self.run_name is not None and not _safe_name(self.run_name):
            raise ValueError(
                f"run_name {self.run_name!r} must be a plain folder name (letters, digits, "
                "'.', '_', '-')"
            )
        return self

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
            raise _config_error(e, source) from e


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "._-" for c in name)


def _config_error(e: ValidationError, source: str) -> ConfigError:
    """One message for the first problem pydantic found, naming the file and the key."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        known = ", ".join(TrainingConfig.model_fields)
        return ConfigError(
            f"{source}: unknown key {key!r}.",
            f"Remove it or fix its spelling. Known keys: {known}.",
        )
    got = (
        f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    )
    msg = err["msg"].removeprefix("Value error, ")
    where = f"key {key!r}: " if key else ""
    more = f" ({e.error_count() - 1} more problem(s) after this one)" if e.error_count() > 1 else ""
    return ConfigError(
        f"{source}: {where}{msg}{got}{more}.",
        "Fix the value in the file or in the --set override; `llmforge train --help` and "
        "configs/custom-transformer.yaml show every key with its meaning.",
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` strings; values are read as YAML scalars (``3``, ``null``...).

    Raises:
        ConfigError: If a pair has no ``=`` or an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set {pair!r} is not of the form key=value.",
                "Write it like --set learning_rate=3e-4.",
            )
        try:
            out[key] = load_yaml(raw) if raw.strip() else None
        except UntrustedYAMLError as e:
            raise ConfigError(
                f"--set {key}=... is refused: {e}.", "Give the value without YAML aliases."
            ) from e
        except yaml.YAMLError:
            out[key] = raw
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file is an empty mapping).

    Raises:
        ConfigError: If the file is missing, unreadable, not YAML, or not a mapping.
    """
    if not path.is_file():
        raise ConfigError(
            f"Config file {path} does not exist.",
            "Check the path; the examples live in configs/ (e.g. configs/custom-transformer.yaml).",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file {path} is not UTF-8 text.", "Save it as UTF-8 YAML.") from e
    try:
        data = load_yaml(text)
    except UntrustedYAMLError as e:
        raise ConfigError(
            f"Config file {path} is refused: {e}.",
            "A training config is a short list of keys; write the values out without aliases.",
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"Config file {path} is not valid YAML{where}: {problem}.",
            "Fix the syntax (indentation, a missing ':' or an unclosed quote are common).",
        ) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must hold a mapping of keys to values, not {type(data).__name__}.",
            "Write it like `max_steps: 300` one key per line.",
        )
    return data


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
    source = str(path) if path is not None else "default config"
    if overrides:
        source += " with command-line overrides"
        data = {**data, **overrides}
        for key in [k for k in data if "." in k]:  # --set lora.r=16 sets a nested key
            section, _, sub = key.partition(".")
            if isinstance(data.get(section, {}), dict):
                data[section] = {**data.get(section, {}), sub: data.pop(key)}
    if data.get("run_name") is None and path is not None:
        data["run_name"] = path.stem
    return TrainingConfig.from_dict(data, source=source)
