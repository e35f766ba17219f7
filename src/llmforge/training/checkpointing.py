"""Writing a run's checkpoints: the atomic save, the RNG states it keeps, pruning, tidying.

A checkpoint is a directory ``runs/<run>/checkpoints/step-NNNNNN/`` holding:

- the adapter's files (``model.safetensors`` + ``config.json`` or a Hugging Face folder); for a
  LoRA run only the adapter (``adapter_model.safetensors`` + ``adapter_config.json``, see
  ``adapters/peft_lora.py``),
- ``tokenizer/`` (the exact tokenizer used),
- ``optimizer.pt`` (tensors only; loaded with ``weights_only=True``),
- ``trainer_state.json`` (step, RNG states, sampler position, losses so far),
- ``meta.json`` (model identity, lineage, tokenizer, resolved config),
- ``manifest.json`` (size and sha256 of every other file; see ``checkpoints/manifest.py``),
  written last.

It is assembled in a hidden temporary directory ``.tmp-step-NNNNNN-PID`` and renamed into
place (:func:`llmforge.fsutil.building_folder`), so a crash never leaves a half checkpoint
under a ``step-*`` name. Reading checkpoints is :mod:`llmforge.checkpoints`' job.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llmforge.adapters import peft_lora
from llmforge.adapters.base import ModelAdapter
from llmforge.checkpoints import manifest
from llmforge.checkpoints.layout import (
    CHECKPOINTS,
    META_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    list_checkpoints,
    step_dirname,
)
from llmforge.fsutil import atomic_write_json, building_folder, publish_folder


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
    with checkpoint_folder(final) as tmp:
        if peft_lora.is_lora(adapter):
            peft_lora.save(adapter, tmp)  # the adapter only; the base stays in the registry
        else:
            adapter.save(tmp)
        adapter.tokenizer.save(tmp / TOKENIZER_DIR)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        atomic_write_json(tmp / STATE_FILE, trainer_state)
        atomic_write_json(tmp / META_FILE, meta)
    return final


@contextlib.contextmanager
def checkpoint_folder(final: Path) -> Iterator[Path]:
    """Assemble the checkpoint ``final`` in a hidden temporary folder; when the block ends
    without an error, write its manifest and rename it into place (see :func:`publish`).

    Yields:
        The empty temporary folder.
    """
    with building_folder(final, temporary_dir(final), _old_dir(final)) as tmp:
        yield tmp
        manifest.write_manifest(tmp)  # sizes + sha256 of every file, checked on load


def temporary_dir(final: Path) -> Path:
    """``.tmp-step-NNNNNN-PID`` beside ``final``: where it is assembled (hidden from listings)."""
    return final.parent / f".tmp-{final.name}-{os.getpid()}"


def _old_dir(final: Path) -> Path:
    return final.parent / f".old-{final.name}-{os.getpid()}"


def publish(tmp: Path, final: Path) -> None:
    """Make the complete folder ``tmp`` the checkpoint ``final``: manifest, fsync, rename.

    An existing ``final`` (left by an earlier attempt of the run) is replaced only after the
    new one is complete, so a crash never leaves neither (:func:`llmforge.fsutil.publish_folder`).
    """
    manifest.write_manifest(tmp)  # sizes + sha256 of every file, checked on load
    publish_folder(tmp, final, _old_dir(final))


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
