"""What a checkpoint records: ``meta.json`` and ``trainer_state.json`` (with the schemas
llmforge relies on), and the tokenizer saved in its ``tokenizer/`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from llmforge.checkpoints.layout import _STEP_RE, META_FILE, STATE_FILE, TOKENIZER_DIR
from llmforge.errors import CheckpointError
from llmforge.modeling.tokenizers import Tokenizer, load_tokenizer
from llmforge.untrusted import load_json


def read_json(path: Path) -> dict[str, Any]:
    """Read a checkpoint's JSON file.

    Raises:
        CheckpointError: If it is missing or not a JSON object.
    """
    try:
        data = load_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is missing or not valid JSON.",
            "The checkpoint is damaged; use another checkpoint of the run.",
        ) from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object.", "Use another checkpoint.")
    return data


# What a checkpoint's two JSON files must look like where llmforge relies on them. Unknown keys
# are kept (newer versions may add some); a known key of the wrong type, a negative or
# fractional step, is a damaged checkpoint: resuming from it would write garbage.
Number = float | None  # losses may be NaN or missing


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=True)


class _RngState(_Lenient):
    torch_cpu: StrictStr
    python: list[Any] = Field(min_length=3, max_length=3)
    torch_cuda: StrictStr | None = None


class _Segment(_Lenient):
    from_step: StrictInt = Field(ge=0)
    max_steps: StrictInt = Field(ge=1)
    mode: str


class TrainerStateFile(_Lenient):
    """``trainer_state.json``: where a run stands after a checkpoint's step."""

    step: StrictInt = Field(ge=0)
    rng: _RngState
    rng_by_rank: list[_RngState] | None = None
    losses: list[tuple[StrictInt, Number]] = Field(default_factory=list)
    elapsed: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    last_loss: Number = None
    last_val_loss: Number = None
    best_val_loss: Number = None
    consecutive_skips: StrictInt = Field(default=0, ge=0)
    skipped_steps: StrictInt = Field(default=0, ge=0)
    world_size: StrictInt = Field(default=1, ge=1)
    strategy: str = "single"
    sampler: dict[str, Any] | None = None
    schedule: list[_Segment] | None = None


class CheckpointMeta(_Lenient):
    """``meta.json``: the model's identity, lineage and the run's resolved config."""

    architecture: StrictStr | None = None
    step: StrictInt | None = Field(default=None, ge=0)
    config: dict[str, Any] | None = None
    run_name: StrictStr | None = None
    model_name: StrictStr | None = None
    model_id: StrictStr | None = None
    model_source: StrictStr | None = None
    fine_tuned_from: StrictStr | None = None
    lineage: list[StrictStr] = Field(default_factory=list)
    finetune: StrictStr | None = None
    tokenizer: dict[str, StrictStr | None] | None = None
    model: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    chat: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    base: dict[str, Any] | None = None
    branched_from: dict[str, Any] | None = None
    model_disk_bytes: StrictInt | None = Field(default=None, ge=0)
    train_loss: Number = None
    val_loss: Number = None


def _validated(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    data = read_json(path)
    try:
        model.model_validate(data)
    except ValidationError as e:
        from llmforge.untrusted import brief

        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {brief(err['input'], 60)})" if "input" in err else ""
        raise CheckpointError(
            f"The checkpoint is damaged: {path} has a bad {key!r}: {err['msg']}{got}.",
            "Nothing was written. Use another checkpoint of the run (`llmforge ckpt list` "
            "shows them), or restore this file from a backup.",
        ) from e
    return data


def load_meta(path: Path) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint, checked against :class:`CheckpointMeta`.

    Raises:
        CheckpointError: If it is missing, not JSON, or a known key has the wrong type.
    """
    return _validated(path / META_FILE, CheckpointMeta)


def load_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint, checked against :class:`TrainerStateFile`;
    its step must be the checkpoint's own (``step-NNNNNN``) and that of ``meta.json``.

    Raises:
        CheckpointError: If it is missing, not JSON, of the wrong shape, or its step disagrees.
    """
    state = _validated(path / STATE_FILE, TrainerStateFile)
    match = _STEP_RE.fullmatch(path.name)
    meta_step = read_json(path / META_FILE).get("step") if (path / META_FILE).is_file() else None
    named = int(match.group(1)) if match else None
    for what, step in (("its folder name", named), (META_FILE, meta_step)):
        if step is not None and step != state["step"]:
            raise CheckpointError(
                f"The checkpoint is damaged: {path / STATE_FILE} says step {state['step']}, "
                f"but {what} says step {step}.",
                "Nothing was written. Use another checkpoint of the run (`llmforge ckpt list` "
                "shows them).",
            )
    return state


def load_checkpoint_tokenizer(path: Path, meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer saved with a checkpoint."""
    tok = meta.get("tokenizer") or {}
    return load_tokenizer(path / TOKENIZER_DIR, tok.get("kind"), tok.get("identifier"))
