"""What a GGUF export writes from: a checkpoint or a registry model, as a Hugging Face folder.

:func:`checkpoint_source` and :func:`registry_source` check everything that can be checked
without writing (the architecture has a GGUF mapping, ``--adapter`` is asked of a LoRA, the
checkpoint matches its manifest, a LoRA's base is the registry model it was trained on) and
return a :class:`GGUFSource`: the model as ``checkpoints/standalone.py`` describes it (plain
files, consolidated shards, or a LoRA merged into its base), the lineage, the license and the
chat template it was trained with. :meth:`GGUFSource.materialize` then lays it out as a
Hugging Face folder inside the export's temporary folder: symbolic links to the checkpoint's
own files (nothing is copied), plus the weights of a model that exists only in memory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.adapters import get_adapter
from llmforge.adapters.gguf_mapping import GGUFMapping
from llmforge.adapters.peft_lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from llmforge.checkpoints import lora_base
from llmforge.checkpoints.layout import check_complete
from llmforge.checkpoints.manifest import MANIFEST_FILE
from llmforge.checkpoints.metadata import load_meta
from llmforge.checkpoints.standalone import StandaloneModel, standalone_model
from llmforge.errors import ExportError
from llmforge.exporting.model_card import card_license
from llmforge.importing.file_selection import is_license_file
from llmforge.store import lineage
from llmforge.store.model_files import require_model_files
from llmforge.store.registry import ModelEntry, ModelRegistry
from llmforge.workspace import Workspace

_SAVED = ("config.json", "model.safetensors", "generation_config.json")
_LICENSE_LIMIT = 1 << 20  # a license text longer than 1 MiB is not a license text


@dataclass
class GGUFSource:
    """A model to export as GGUF, checked, not yet written anywhere.

    Attributes:
        label: What messages call it (``the checkpoint runs/r/checkpoints/step-000020``).
        stem: The GGUF files' name stem (``r-step-20``).
        architecture: The registry's architecture string.
        mapping: Its GGUF mapping (from the adapter).
        model: The model's files and, for merged or sharded checkpoints, the model itself.
        adapter_base: For ``--adapter``: the base model's Hugging Face folder.
        meta: Facts for the metadata, the card and the Modelfile: ``name``, ``lineage``,
            ``license``, ``chat_template``, ``system`` (the one system prompt of the training
            data), ``llmforge`` (the ``llmforge.*`` keys).
        license_text: The nearest ancestor's LICENSE file, for the Modelfile.
        notes: Warnings for the user (an accepted base mismatch).
    """

    label: str
    stem: str
    architecture: str
    mapping: GGUFMapping
    model: StandaloneModel
    adapter_base: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    license_text: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def in_memory_bytes(self) -> int:
        """Bytes :meth:`materialize` writes for a model held in memory (0 for linked files)."""
        if self.model.model is None:
            return 0
        return sum(p.numel() * p.element_size() for p in self.model.model.model.parameters())

    def materialize(self, folder: Path) -> Path:
        """Lay the model out as a Hugging Face folder at ``folder`` and return it.

        Files of the checkpoint (or the registry model) become symbolic links: llama.cpp's
        tensors are read from them and nothing is copied; a model held in memory is saved.
        """
        folder.mkdir(parents=True)
        self.model.write(folder, _link)
        return folder


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def _stem(text: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return (stem or "model")[:80]


def _mapping(architecture: str, what: str) -> GGUFMapping:
    mapping = get_adapter(architecture).gguf_mapping
    if mapping is None:
        raise ExportError(
            f"{what} is a {architecture} model, and llama.cpp has no architecture that runs it "
            "(its adapter declares no GGUF mapping).",
            "Export it with --format hf (the default) instead; an adapter for another "
            "architecture can declare a gguf_mapping (docs/adapters.md).",
        )
    return mapping


def _license_text(ws: Workspace, names: list[str]) -> str | None:
    """The first LICENSE-like file of the registered models ``names`` (nearest first)."""
    registry = ModelRegistry(ws)
    for name in names:
        if not registry.exists(name):
            continue
        folder = ws.model_path(registry.get(name).local_path)
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            if is_license_file(p.name) and p.is_file() and p.stat().st_size <= _LICENSE_LIMIT:
                return p.read_text(encoding="utf-8", errors="replace")
    return None


def _check_adapter_request(is_lora: bool, adapter: bool, what: str) -> None:
    if adapter and not is_lora:
        raise ExportError(
            f"--adapter writes a GGUF LoRA adapter, but {what} holds full weights.",
            "Export it without --adapter.",
        )


def checkpoint_source(
    ws: Workspace, ckpt: Path, *, adapter: bool = False, allow_base_mismatch: bool = False
) -> GGUFSource:
    """The checkpoint at ``ckpt`` as a GGUF export will write it.

    A LoRA checkpoint is merged into its base unless ``adapter`` (then its adapter files and
    the base's folder are used as they are).

    Raises:
        CheckpointError: If the checkpoint is incomplete or damaged, or a LoRA base changed.
        ExportError: If the architecture has no GGUF mapping, or ``adapter`` is asked of a
            checkpoint that is not LoRA.
    """
    check_complete(ckpt, full=True)  # its bytes go into the file: every sha256 is compared
    meta = load_meta(ckpt)
    arch, what = str(meta.get("architecture")), f"The checkpoint {ckpt}"
    mapping = _mapping(arch, what)
    is_lora = meta.get("finetune") == "lora"
    _check_adapter_request(is_lora, adapter, what.replace("The", "the", 1))
    model = standalone_model(
        ws,
        ckpt,
        meta,
        merge=is_lora and not adapter,
        allow_base_mismatch=allow_base_mismatch,
        check_base=adapter,
    )
    base_folder = None
    if adapter:
        _, base_folder, _ = lora_base.check_base(
            ws, meta.get("base") or {}, what, allow_mismatch=allow_base_mismatch
        )
    run, step = str(meta.get("run_name") or ckpt.parent.parent.name), meta.get("step")
    chain = [str(x) for x in meta.get("lineage") or []]
    names, _ = lineage.split(chain)
    rel = ckpt.resolve()
    rel = rel.relative_to(ws.root.resolve()) if rel.is_relative_to(ws.root.resolve()) else rel
    info = {
        "run": run,
        "step": int(step) if isinstance(step, int) else -1,
        "checkpoint": rel.as_posix(),
        "manifest": (rel / MANIFEST_FILE).as_posix(),
        "lineage": lineage.chain_text(f"run {run} step {step}", chain),
        "finetune": str(meta.get("finetune") or "full"),
    }
    return GGUFSource(
        label=f"the checkpoint {ckpt}",
        stem=_stem(f"{run}-step-{step}"),
        architecture=arch,
        mapping=mapping,
        model=model,
        adapter_base=base_folder,
        meta={
            "name": f"{run} (step {step})",
            "lineage": chain,
            "license": card_license(ws, meta),
            "chat_template": (meta.get("chat") or {}).get("chat_template"),
            "system": (meta.get("chat") or {}).get("system_prompt"),
            "llmforge": info,
            "checkpoint_meta": meta,
            "checkpoint": ckpt,
        },
        license_text=_license_text(ws, names),
        notes=list(model.notes),
    )


def registry_source(
    ws: Workspace, entry: ModelEntry, *, adapter: bool = False, allow_base_mismatch: bool = False
) -> GGUFSource:
    """The registry model ``entry`` as a GGUF export will write it (see :func:`checkpoint_source`).

    Raises:
        ModelFilesMissingError: If its files are missing or changed size.
        ExportError: As :func:`checkpoint_source`.
    """
    what = f"The model {entry.model_name!r}"
    mapping = _mapping(entry.architecture, what)
    is_lora = lora_base.is_adapter_entry(entry)
    _check_adapter_request(is_lora, adapter, what.replace("The", "the", 1))
    folder = require_model_files(ws, entry)
    files = {name: folder / name for name in sorted(entry.files)}
    model, notes, base_folder = StandaloneModel(files, is_lora=is_lora), [], None
    if is_lora and adapter:
        d = entry.details
        base = {"model_name": d.get("base"), "manifest_sha256": d.get("base_manifest_sha256")}
        _, base_folder, notes = lora_base.check_base(
            ws, base, what, allow_mismatch=allow_base_mismatch
        )
    elif is_lora:  # merged: the base with the adapter folded in, saved with the tokenizer
        from llmforge.adapters import peft_lora

        loaded, notes = lora_base.load_adapter_entry(ws, entry, allow_mismatch=allow_base_mismatch)
        peft_lora.merge(loaded)
        # what the merged model's save writes (its generation config names the stop tokens)
        skip = {ADAPTER_WEIGHTS, ADAPTER_CONFIG, *_SAVED}
        kept = {n: p for n, p in files.items() if n not in skip and not is_license_file(n)}
        model = StandaloneModel(kept, model=loaded, is_lora=True, merged=True)
    registry = ModelRegistry(ws)
    chain = lineage.registry_lineage(registry, entry.model_name)[1:]
    names, _ = lineage.split(chain)
    info = {
        "model": entry.model_name,
        "lineage": lineage.chain_text(f"model {entry.model_name}", chain),
        "source": entry.source,
    }
    return GGUFSource(
        label=f"the model {entry.model_name!r}",
        stem=_stem(entry.model_name),
        architecture=entry.architecture,
        mapping=mapping,
        model=model,
        adapter_base=base_folder,
        meta={
            "name": entry.model_name,
            "lineage": chain,
            "license": card_license(ws, {"license": entry.license, "lineage": chain}),
            "chat_template": None,
            "llmforge": info,
            # what a checkpoint's meta.json says of its data, as register copied it
            "trained_on": {"data": {"hub": entry.details.get("data_hub")}},
        },
        license_text=_license_text(ws, [entry.model_name, *names]),
        notes=list(notes),
    )
