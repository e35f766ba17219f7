"""``TrainingConfig``: every knob of a training run, loaded from YAML with CLI overrides.

Unknown keys are rejected, every field has a default (no config file means sensible
defaults), and a bad file produces one ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)

from llmforge.errors import ConfigError
from llmforge.untrusted import UntrustedYAMLError, brief, load_yaml, terminal_text

# Keys that only shape the from-scratch Transformer; a registry model's own config wins.
# (block_size is not among them: it is the training sequence length for every model.)
ARCHITECTURE_KEYS = ("n_layers", "d_model", "n_heads", "dropout")

DEFAULT_WARMUP = 30

# The optimisation defaults depend on what is trained: a from-scratch model wants a large
# learning rate and weight decay, a pretrained model a gentle one (100x smaller: 2e-3 would
# wreck it), and LoRA adapters something between. These are the shipped configs' values
# (configs/custom-transformer.yaml, qwen-base.yaml, qwen-lora.yaml). min_lr defaults to a
# tenth of the learning rate, and an unset warmup is at most a tenth of the run.
KIND_DEFAULTS: dict[str, dict[str, float | int]] = {
    "from scratch": {"learning_rate": 2e-3, "weight_decay": 0.1, "warmup_steps": DEFAULT_WARMUP},
    "full fine-tune": {"learning_rate": 2e-5, "weight_decay": 0.0, "warmup_steps": 10},
    "LoRA": {"learning_rate": 2e-4, "weight_decay": 0.0, "warmup_steps": 10},
}
KIND_PHRASES = {
    "from scratch": "training from scratch",
    "full fine-tune": "a full fine-tune",
    "LoRA": "LoRA",
}

# Run names are folder names under output_dir: printable, short (ENAMETOOLONG must never
# surface), never hidden (llmforge's own temporary names start with '.').
MAX_RUN_NAME_LENGTH = 100
MAX_SEED = 2**32 - 1  # what torch, numpy and random all accept

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
    "schedule_on_extend",
)


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
    chat_template: str | None = Field(
        default=None,
        description="None = the model's own, else ChatML; 'chatml'; a Jinja template or "
        "a .jinja file.",
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
        "fast (a GPU with bf16, a CPU with AVX512-BF16 or AMX), else fp32. The resolved value "
        "is recorded in the run.",
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

    @model_validator(mode="wrap")
    @classmethod
    def _defaults_by_kind(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Unset optimisation keys take the defaults of what is trained, and a warmup that does
        # not fit the run is capped; the keys chosen here do not count as set by the user.
        if not isinstance(data, dict):
            return handler(data)  # validating an assignment: nothing is chosen anew
        data, chosen, notes = _fill_defaults(data)
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
        return _kind(self.model_name, self.finetune)

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
            raise _config_error(e, source) from e


def _kind(model_name: object, finetune: object) -> str:
    if model_name is None:
        return "from scratch"
    return "LoRA" if finetune == "lora" else "full fine-tune"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fill_defaults(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``data`` with the kind-dependent defaults filled in, which ones (and why), and notes."""
    kind = _kind(data.get("model_name"), data.get("finetune", "full"))
    base = KIND_DEFAULTS[kind]
    what = KIND_PHRASES[kind]
    data, chosen, notes = dict(data), {}, []
    steps = data.get("max_steps", 300)
    for key in ("learning_rate", "weight_decay"):
        if data.get(key) is None:
            data[key] = base[key]
            chosen[key] = f"the default for {what}"
    if data.get("min_lr") is None:
        lr = data["learning_rate"]
        if isinstance(lr, int | float) and not isinstance(lr, bool):
            data["min_lr"] = float(f"{lr / 10:.12g}")  # 2e-05, not 2.0000000000000003e-06
        chosen["min_lr"] = "a tenth of learning_rate"
    if data.get("warmup_steps") is None:
        # An unset warmup shrinks with short runs, so `--max-steps 20` works out of the box.
        warm = int(base["warmup_steps"])
        data["warmup_steps"] = min(warm, steps // 10) if _is_int(steps) and steps > 0 else warm
        chosen["warmup_steps"] = f"the default for {what}, at most a tenth of max_steps"
    elif _is_int(data["warmup_steps"]) and _is_int(steps) and 0 < steps <= data["warmup_steps"]:
        # `--max-steps N` runs exactly N steps, even when the file's warmup is longer.
        notes.append(
            f"warmup_steps ({data['warmup_steps']}) is not below max_steps ({steps}): the "
            f"warmup is capped at {steps - 1} step(s) for this run."
        )
        data["warmup_steps"] = steps - 1
    return data, chosen, notes


def run_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a run folder's name, or None if it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty folder name"
    if len(name) > MAX_RUN_NAME_LENGTH or len(name.encode("utf-8")) > 2 * MAX_RUN_NAME_LENGTH:
        return f"is {len(name):,} characters long (at most {MAX_RUN_NAME_LENGTH})"
    if not name[0].isalnum() or not all(c.isalnum() or c in "._-" for c in name):
        return (
            "must be a plain folder name: letters, digits, '.', '_' and '-', starting with a "
            "letter or digit (never a path)"
        )
    return None


def _short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters and made safe for a terminal (no quotes added)."""
    cut = text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
    return terminal_text(cut, keep_newlines=False)


def _config_error(e: ValidationError, source: str) -> ConfigError:
    """One message for the first problem pydantic found, naming the file and the key."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        known = ", ".join(TrainingConfig.model_fields)
        return ConfigError(
            f"{source}: unknown key {brief(key, 80)}.",
            f"Remove it or fix its spelling. Known keys: {known}.",
        )
    # The input can be anything a YAML file holds (a list of 100,000 aliases): echo it briefly.
    got = (
        f" (got {brief(err['input'])})"
        if "input" in err and not isinstance(err["input"], dict)
        else ""
    )
    msg = _short(err["msg"].removeprefix("Value error, "), 400)
    where = f"key {brief(key, 80)}: " if key else ""
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
                f"--set {brief(pair)} is not of the form key=value.",
                "Write it like --set learning_rate=3e-4.",
            )
        try:
            out[key] = load_yaml(raw) if raw.strip() else None
        except UntrustedYAMLError as e:
            raise ConfigError(
                f"--set {brief(key, 60)}=... is refused: {e}.",
                "Give the value without YAML aliases.",
            ) from e
        except yaml.YAMLError:
            out[key] = raw
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file is an empty mapping).

    Raises:
        ConfigError: If the file is missing, unreadable, not YAML, or not a mapping.
    """
    shown = _short(str(path), 200)
    try:
        if path.is_dir():
            raise ConfigError(
                f"The config path {shown} is a directory, not a YAML file.",
                "Give the config file itself (e.g. configs/custom-transformer.yaml).",
            )
        if not path.is_file():
            raise ConfigError(
                f"Config file {shown} does not exist.",
                "Check the path; the examples live in configs/ (e.g. "
                "configs/custom-transformer.yaml).",
            )
        if path.stat().st_size > 4 << 20:
            raise ConfigError(
                f"Config file {shown} is larger than 4 MiB; a training config is a short list "
                "of keys.",
                "Check that the path names the config, not a data file.",
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"Config file {shown} is not UTF-8 text.", "Save it as UTF-8 YAML."
        ) from e
    except OSError as e:  # unreadable, or a name too long for the filesystem
        raise ConfigError(
            f"Config file {shown} cannot be read ({e.strerror or type(e).__name__}).",
            "Check the path and its permissions.",
        ) from e
    try:
        data = load_yaml(text)
    except UntrustedYAMLError as e:
        raise ConfigError(
            f"Config file {shown} is refused: {e}.",
            "A training config is a short list of keys; write the values out without aliases.",
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"Config file {shown} is not valid YAML{where}: {_short(str(problem), 200)}.",
            "Fix the syntax (indentation, a missing ':' or an unclosed quote are common).",
        ) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {shown} must hold a mapping of keys to values, not "
            f"{type(data).__name__}.",
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
    source = _short(str(path), 200) if path is not None else "default config"
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
                f"The run is named after the config file, but {_short(path.stem, 60)!r} {problem}.",
                "Name the run with --run-name NAME (or run_name: NAME in the config).",
            )
        data["run_name"] = path.stem
    return TrainingConfig.from_dict(data, source=source)
