"""``ckpt export --format gguf``: a checkpoint or a registry model as GGUF, a Modelfile and a card.

The sequence, every check before anything is written:

1. the dtype (and for a K-quant, llama.cpp's quantizer) and the ``gguf`` package;
2. TARGET: a checkpoint reference first, else a registry model name (as ``generate``);
3. the destination (new or empty, or ``--force``; never inside ``models/`` or ``runs/``);
4. the source (``gguf_source.py``): a GGUF mapping for the architecture, ``--adapter`` only for
   a LoRA, the checkpoint's manifest, a LoRA base's identity; a LoRA is merged in memory.

Then the folder is assembled beside the destination (``hf_folder.writing_export``: temp, then
rename): the model laid out as a Hugging Face folder in ``.work/`` (links, or the merged
weights), the GGUF plan checked (tokenizer, stop tokens, RoPE, sliding window) and the free
space measured, the tensors streamed, a K-quant made by llama.cpp from an F16 file, then the
``Modelfile`` and ``README.md``. ``.work/`` is removed before the rename, so the folder holds
only what it lists; a refusal or a failure at any point leaves nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from llmforge.errors import ExportError
from llmforge.exporting.gguf_folder import FLOAT_DTYPES, WORK, GGUFExportResult, write_folder
from llmforge.exporting.hf_folder import check_dest, clean_stale_exports, writing_export
from llmforge.inference.model_source import find_source
from llmforge.untrusted import brief
from llmforge.workspace import Workspace

__all__ = ["GGUFExportResult", "export_gguf", "gguf_dtypes"]


def gguf_dtypes() -> list[str]:
    """Every ``--dtype`` of a GGUF export: the float types, then llama.cpp's quantizations."""
    from llmforge.exporting.gguf_quant import QUANT_FTYPES

    return [*FLOAT_DTYPES, *QUANT_FTYPES]


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ExportError(
            "GGUF export needs the gguf package (llama.cpp's gguf-py), which is not installed.",
            "Install it with pip install 'llmforge[gguf]' (pure Python, seconds).",
        ) from e


def _check_dtype(dtype: str) -> None:
    if dtype in FLOAT_DTYPES:
        return
    from llmforge.exporting.gguf_quant import QUANT_FTYPES, require_quantizer

    if dtype not in QUANT_FTYPES:
        raise ExportError(
            f"--dtype {brief(dtype, 40)} is not a GGUF type llmforge writes.",
            f"Use one of {', '.join(gguf_dtypes())} (f16 by default).",
        )
    require_quantizer(dtype)


def export_gguf(
    ws: Workspace,
    target: str,
    dest: Path,
    *,
    dtype: str = "f16",
    adapter: bool = False,
    with_base: bool = False,
    force: bool = False,
    allow_base_mismatch: bool = False,
    progress: Any = None,
) -> GGUFExportResult:
    """Export TARGET (a checkpoint reference or a registry model name) as GGUF into ``dest``.

    Args:
        ws: The workspace.
        target: A checkpoint (``RUN``, ``RUN/step-N``, a folder) or a registry model name.
        dest: The folder to write (new or empty; ``force`` replaces its contents).
        dtype: ``f32``, ``f16``, ``bf16``, ``q8_0``, or a llama.cpp K-quant (``q4_k_m``).
        adapter: For a LoRA: write a GGUF LoRA adapter instead of merged weights.
        with_base: With ``adapter``: also write the base model's GGUF (and the Modelfile).
        force: Replace the contents of a non-empty ``dest``.
        allow_base_mismatch: Accept a LoRA base whose files changed (reported in ``notes``).
        progress: Called with (bytes written, total bytes) while tensors are written.

    Raises:
        ExportError: For a bad dtype, destination, architecture or model (nothing is left).
        InsufficientDiskError: If the disk cannot hold the export.
        CheckpointError: If TARGET matches nothing, or a checkpoint is damaged.
    """
    from llmforge.exporting import gguf_source

    _check_dtype(dtype)
    _require_gguf()
    if with_base and not adapter:
        raise ExportError(
            "--with-base goes with --adapter (the base's GGUF beside the adapter's).",
            "Add --adapter, or leave --with-base out (a merged export holds the whole model).",
        )
    found = find_source(ws, target)  # the same resolution as generate
    ckpt, entry = found.checkpoint, found.entry
    dest = dest.expanduser().resolve()
    clean_stale_exports(dest)
    check_dest(ws, ckpt if ckpt is not None else ws.models_dir, dest, force)
    kw = {"adapter": adapter, "allow_base_mismatch": allow_base_mismatch}
    source = (
        gguf_source.checkpoint_source(ws, ckpt, **kw)
        if ckpt is not None
        else gguf_source.registry_source(ws, entry, **kw)
    )
    with writing_export(dest) as folder:
        result = write_folder(source, folder, dtype, with_base, progress)
        shutil.rmtree(folder / WORK, ignore_errors=True)
    result.dest = dest
    result.files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    return result
