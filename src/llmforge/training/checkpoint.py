"""Checkpoints: atomic save, discovery, loading, pruning.

A checkpoint is a directory ``runs/<run>/checkpoints/step-NNNNNN/`` holding:

- the adapter's files (``model.safetensors`` + ``config.json`` or a Hugging Face folder); for a
  LoRA run only the adapter (``adapter_model.safetensors`` + ``adapter_config.json``, see
  ``training/lora.py``),
- ``tokenizer/`` (the exact tokenizer used),
- ``optimizer.pt`` (tensors only; loaded with ``weights_only=True``),
- ``trainer_state.json`` (step, RNG states, sampler position, losses so far),
- ``meta.json`` (model identity, lineage, tokenizer, resolved config),
- ``manifest.json`` (size and sha256 of every other file; see ``training/ckpt_manifest.py``),
  written last.

It is assembled in a hidden temporary directory and renamed into place, so a crash never
leaves a half checkpoint under a ``step-*`` name.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from llmforge.adapters import get_adapter
from llmforge.adapters import lora as peft_lora
from llmforge.adapters.base import ModelAdapter
from llmforge.errors import CheckpointError
from llmforge.fsutil import atomic_write_json, fsync_dir, iter_files
from llmforge.tokenizers import Tokenizer, load_tokenizer
from llmforge.training import ckpt_manifest
from llmforge.workspace import Workspace

CHECKPOINTS = "checkpoints"
META_FILE = "meta.json"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
TOKENIZER_DIR = "tokenizer"
REQUIRED = (META_FILE, STATE_FILE, OPTIMIZER_FILE, TOKENIZER_DIR)
SHARDS_DIR = "shards"  # instead of the weights and optimizer.pt: see training/sharded.py
_STEP_RE = re.compile(r"step-(\d{6,})")


def step_dirname(step: int) -> str:
    """``step-000200`` for step 200."""
    return f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are ignored)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and _STEP_RE.fullmatch(p.name) and (p / META_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _fsync_tree(folder: Path) -> None:
    for f in iter_files(folder):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(folder)


def rng_state() -> dict[str, Any]:
    """The global RNG states that training consumes (dropout uses torch's CPU generator)."""
    import random

    state = {
        "torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on the GPU
        raw = torch.cuda.get_rng_state().numpy().tobytes()
        state["torch_cuda"] = base64.b64encode(raw).decode("ascii")
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import random

    raw = base64.b64decode(state["torch_cpu"])
    torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    if "torch_cuda" in state and torch.cuda.is_available():
        raw = base64.b64decode(state["torch_cuda"])
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    run_dir: Path,
    step: int,
    adapter: ModelAdapter,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically and return its final path.

    An existing checkpoint of the same step (left by an earlier attempt of the run) is
    replaced only after the new one is complete.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dirname(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        if peft_lora.is_lora(adapter):
            peft_lora.save(adapter, tmp)  # the adapter only; the base stays in the registry
        else:
            adapter.save(tmp)
        adapter.tokenizer.save(tmp / TOKENIZER_DIR)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        atomic_write_json(tmp / STATE_FILE, trainer_state)
        atomic_write_json(tmp / META_FILE, meta)
        publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def publish(tmp: Path, final: Path) -> None:
    """Make the complete folder ``tmp`` the checkpoint ``final``: fsync, then rename.

    An existing ``final`` (left by an earlier attempt of the run) is replaced only after the
    new one is in place under a hidden name, so a crash never leaves neither.
    """
    ckpt_manifest.write_manifest(tmp)  # sizes + sha256 of every file, checked on load
    _fsync_tree(tmp)
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fsync_dir(final.parent)


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints; return the deleted paths.

    Each one is first renamed to a hidden ``.old-`` name (atomic), then deleted: a crash
    half-way through deleting it must not leave a ``step-*`` directory that looks complete.
    """
    ckpts = list_checkpoints(run_dir)
    doomed = ckpts[:-keep_last] if keep_last > 0 else []
    for p in doomed:
        trash = p.with_name(f".old-{p.name}-{os.getpid()}")
        p.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def clean_temporaries(run_dir: Path) -> None:
    """Remove temporary directories that a crashed save left behind."""
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def check_complete(path: Path, *, full: bool = False) -> None:
    """Raise if ``path`` is not a complete checkpoint directory, or differs from its manifest.

    Args:
        path: The checkpoint directory.
        full: Compare every file's sha256 with the manifest (``ckpt register``, ``export``);
            by default sizes, and the sha256 of small files (see ``ckpt_manifest``).

    Raises:
        CheckpointError: Naming the checkpoint and what is missing.
        CheckpointDamagedError: Naming the files that were changed or truncated.
    """
    if not path.is_dir():
        raise CheckpointError(
            f"No checkpoint at {path}.",
            "Give a checkpoint directory (runs/RUN/checkpoints/step-NNNNNN), a run name for "
            "its latest checkpoint, or RUN/step-N; `llmforge ckpt list` shows them.",
        )
    required = REQUIRED
    if (path / SHARDS_DIR).is_dir():  # an FSDP checkpoint (training/sharded.py)
        required = (META_FILE, STATE_FILE, TOKENIZER_DIR, f"{SHARDS_DIR}/.metadata")
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise CheckpointError(
            f"The checkpoint {path} is incomplete: {', '.join(missing)} missing.",
            "Use another checkpoint of the run (an earlier step), or delete this one.",
        )
    ckpt_manifest.require_intact(path, full=full)


def read_json(path: Path) -> dict[str, Any]:
    """Read a checkpoint's JSON file.

    Raises:
        CheckpointError: If it is missing or not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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


def load_optimizer_state(path: Path) -> dict[str, Any]:
    """The optimizer state, loaded with ``weights_only=True`` (no code runs on load).

    Raises:
        CheckpointError: If the file is missing, corrupt, or holds anything but tensors.
    """
    try:
        return torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        if "weights only load failed" in str(e).lower():  # never pass on torch's advice
            raise CheckpointError(
                f"{path / OPTIMIZER_FILE} was refused: it is a pickle that holds more than "
                "tensors, and loading it could run code on this machine (llmforge loads it "
                "only with weights_only=True, which stopped it; nothing from it ran).",
                "llmforge writes a tensors-only optimizer state, so this file came from "
                "elsewhere: use another checkpoint of the run, and never load a file you do "
                "not trust with weights_only=False (that runs its code).",
            ) from None
        raise CheckpointError(
            f"Cannot load {path / OPTIMIZER_FILE}: {type(e).__name__}.",
            "The file is corrupt or not a tensors-only optimizer state; use another "
            "checkpoint of the run.",
        ) from e


def load_checkpoint_tokenizer(path: Path, meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer saved with a checkpoint."""
    tok = meta.get("tokenizer") or {}
    return load_tokenizer(path / TOKENIZER_DIR, tok.get("kind"), tok.get("identifier"))


def load_checkpoint_adapter(
    path: Path,
    workspace: Workspace | None = None,
    *,
    allow_base_mismatch: bool = False,
    warnings: list[str] | None = None,
) -> tuple[ModelAdapter, dict[str, Any]]:
    """The model and tokenizer of a checkpoint, with its metadata.

    A LoRA checkpoint needs ``workspace``: its base model comes from the registry, and is
    checked against the recorded manifest hash (see ``training/lora.py``); warnings (a
    mismatch accepted with ``allow_base_mismatch``) are appended to ``warnings``.

    Raises:
        CheckpointError: If the checkpoint is incomplete or its files do not fit.
        AdapterNotFoundError: If no adapter handles its architecture.
    """
    check_complete(path)
    meta = load_meta(path)
    arch = meta.get("architecture")
    if not isinstance(arch, str):
        raise CheckpointError(
            f"{path / META_FILE} names no architecture.", "Use another checkpoint."
        )
    if meta.get("finetune") == "lora":
        from llmforge.training import lora

        if workspace is None:
            raise CheckpointError(
                f"{path} is a LoRA checkpoint; its base model must come from a workspace.",
                "Load it through llmforge's commands (they know the workspace).",
            )
        adapter, notes = lora.load_checkpoint(
            workspace, path, meta, allow_mismatch=allow_base_mismatch
        )
        if warnings is not None:
            warnings.extend(notes)
        return adapter, meta
    if (path / SHARDS_DIR).is_dir():
        from llmforge.training.sharded import load_consolidated

        return load_consolidated(path)
    tokenizer = load_checkpoint_tokenizer(path, meta)
    adapter = get_adapter(arch).load(path, tokenizer)
    return adapter, meta


def checkpoint_bytes(path: Path) -> int:
    """Size of a checkpoint on disk."""
    with contextlib.suppress(OSError):
        return sum(f.stat().st_size for f in iter_files(path))
    return 0
