"""The folder of a GGUF export: the GGUF file(s), the Ollama ``Modelfile`` and ``README.md``.

:func:`write_folder` fills the export's temporary folder (``hf_folder.writing_export``) from a
checked :class:`~llmforge.exporting.gguf_source.GGUFSource`: the model laid out as a Hugging
Face folder in ``.work/``, the GGUF plan and the free space checked before the tensors are
streamed, a K-quant made by llama.cpp from an F16 file in ``.work/``, then the Modelfile and the
card. The caller removes ``.work/`` and renames the folder into place.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.adapters.peft_lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from llmforge.data.hub_data import dataset_ids, hub_entries
from llmforge.errors import InsufficientDiskError
from llmforge.exporting import gguf_lora, gguf_writer
from llmforge.exporting.gguf_source import GGUFSource
from llmforge.exporting.gguf_writer import BaseModel, GGUFInfo, GGUFPlan, TrainingDataset
from llmforge.exporting.hf_folder import CARD
from llmforge.exporting.model_card import gguf_section, model_card, registry_card
from llmforge.exporting.modelfile import build_modelfile, clean, quote
from llmforge.fsutil import atomic_write_text, human_bytes
from llmforge.store import lineage

FLOAT_DTYPES = ("f32", "f16", "bf16", "q8_0")  # written by gguf-py alone
MODELFILE = "Modelfile"
WORK = ".work"


@dataclass
class GGUFExportResult:
    """What a GGUF export wrote.

    Attributes:
        source: What was exported (``the checkpoint ...`` / ``the model 'x'``).
        dest: The folder written.
        files: Names of the files in it.
        architecture: The model's architecture.
        dtype: The GGUF type asked for.
        stop_tokens: The tokens generation stops at, turn end first.
        tensor_types: GGML type -> number of tensors in the main GGUF file.
        fell_back: For a K-quant: tensors llama.cpp could not K-quantize (rows not a
            multiple of 256), which got an older type.
        modelfile: Whether an Ollama ``Modelfile`` was written.
        notes: Warnings for the user.
    """

    source: str
    dest: Path
    files: list[str]
    architecture: str
    dtype: str
    stop_tokens: list[str]
    tensor_types: dict[str, int] = field(default_factory=dict)
    fell_back: int = 0
    modelfile: bool = False
    notes: list[str] = field(default_factory=list)


def _check_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed + (64 << 20) > free:
        raise InsufficientDiskError(
            f"The GGUF export needs about {human_bytes(needed)} for {what} but only "
            f"{human_bytes(free)} is free on the disk holding {folder.parent}. Nothing was "
            "written.",
            "Free some space, export to another disk, or pick a smaller --dtype (q8_0).",
        )


def base_models(chain: list[str]) -> list[BaseModel]:
    """``general.base_model.N.*`` for a lineage (nearest first, down to the hub id)."""
    out = []
    for item in chain:
        kind, _, ident = item.partition(":") if lineage.is_origin(item) else ("", "", item)
        if kind == "hf" and "/" in ident:
            org, _, name = ident.partition("/")
            out.append(BaseModel(name, org, f"https://huggingface.co/{ident}"))
        else:
            out.append(BaseModel(ident))
    return out


def training_datasets(meta: dict[str, Any]) -> list[TrainingDataset]:
    """``general.dataset.N.*`` for the hub datasets of a checkpoint's ``meta.json``."""
    out, entries = [], list(hub_entries(meta).values())
    for ident in dataset_ids(meta):
        sha = next((e.get("sha") for e in entries if e.get("dataset") == ident), None)
        org, _, name = ident.partition("/")
        url = f"https://huggingface.co/datasets/{ident}"
        out.append(TrainingDataset(name or org, org if name else None, url, sha))
    return out


def _info(source: GGUFSource, name_suffix: str = "") -> GGUFInfo:
    meta = source.meta
    return GGUFInfo(
        name=meta["name"] + name_suffix,
        license=meta.get("license"),
        base_models=base_models(meta.get("lineage") or []),
        datasets=training_datasets(meta.get("checkpoint_meta") or meta.get("trained_on") or {}),
        custom=dict(meta.get("llmforge") or {}),
    )


def _write_model(
    plan: GGUFPlan, folder: Path, name: str, dtype: str, info: GGUFInfo, progress: Any
) -> tuple[dict[str, int], int]:
    """Write ``plan`` as ``folder/name`` (through an F16 file for a K-quant); return the
    tensor types and how many tensors fell back from the K-quant."""
    quant = dtype not in FLOAT_DTYPES
    _check_space(folder, plan.nbytes + (plan.nbytes // 2 if quant else 0), "the GGUF file")
    if not quant:
        gguf_writer.write_gguf(plan, folder / name, info, progress)
        return dict(_types(folder / name)), 0
    from llmforge.exporting.gguf_quant import quantize_gguf

    f16 = folder / WORK / f"{name}.f16"
    gguf_writer.write_gguf(plan, f16, info, progress)
    report = quantize_gguf(f16, folder / name, dtype)
    f16.unlink()
    return report.types, report.fell_back({"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"})


def _types(path: Path) -> dict[str, int]:
    from llmforge.exporting.gguf_quant import tensor_types

    return tensor_types(path)


def _base_view(base: Path, adapter: Path, dst: Path) -> Path:
    """A folder of links: the base model's files, overridden by the adapter folder's
    tokenizer files and generation config (everything but the adapter's own two files)."""
    dst.mkdir()
    for p in sorted(base.iterdir()):
        if p.is_file():
            (dst / p.name).symlink_to(p.resolve())
    for p in sorted(adapter.iterdir()):
        if p.name not in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) and p.is_file():
            (dst / p.name).unlink(missing_ok=True)
            (dst / p.name).symlink_to(p.resolve())
    return dst


def _model_plan(source: GGUFSource, folder: Path, hf: Path, dtype: str) -> GGUFPlan:
    file_dtype = dtype if dtype in FLOAT_DTYPES else "f16"
    return gguf_writer.plan_gguf(hf, source.mapping, file_dtype, source.meta.get("chat_template"))


def write_folder(
    source: GGUFSource, folder: Path, dtype: str, with_base: bool, progress: Any
) -> GGUFExportResult:
    """Fill ``folder`` (the export's temporary folder) with the GGUF export of ``source``.

    Raises:
        ExportError: If the model cannot be written as GGUF.
        InsufficientDiskError: If the disk cannot hold it (checked before the tensors).
    """
    _check_space(folder, source.in_memory_bytes, "the merged model's weights")
    hf = source.materialize(folder / WORK / "model")
    adapter = source.adapter_base is not None
    result = GGUFExportResult(source.label, folder, [], source.architecture, dtype, [])
    result.notes = list(source.notes)
    adapter_file = main = None
    if adapter:
        lora_dtype = dtype if dtype in FLOAT_DTYPES else "f16"
        lplan = gguf_lora.plan_lora(hf, source.adapter_base, source.mapping, lora_dtype)
        # The base's weights with the fine-tune's tokenizer files and generation config: the
        # adapter file has no vocabulary, llama.cpp stops where the base's GGUF says.
        base_view = _base_view(source.adapter_base, hf, folder / WORK / "base")
        plan = _model_plan(source, folder, base_view, dtype)
        _check_space(folder, lplan.nbytes, "the LoRA adapter")
        adapter_file = f"{source.stem}-lora-{lora_dtype}.gguf"
        gguf_lora.write_lora(lplan, folder / adapter_file, _info(source, " (LoRA adapter)"))
        if with_base:
            main = f"{source.stem}-base-{dtype}.gguf"
            base_info = GGUFInfo(name=f"{source.meta['name']} base", license=source.meta["license"])
            result.tensor_types, result.fell_back = _write_model(
                plan, folder, main, dtype, base_info, progress
            )
    else:
        plan = _model_plan(source, folder, hf, dtype)
        main = f"{source.stem}-{dtype}.gguf"
        result.tensor_types, result.fell_back = _write_model(
            plan, folder, main, dtype, _info(source), progress
        )
    vocab = plan.vocab
    result.stop_tokens = [vocab.tokens[i] for i in vocab.stop_ids]
    if main is not None:
        system = source.meta.get("system")
        if system is not None and quote(clean(system)) is None:
            result.notes.append(
                "The training data's system prompt has a run of three quotes at the end of a "
                "line, which an Ollama Modelfile cannot quote: the Modelfile has no SYSTEM."
            )
            system = None
        text = build_modelfile(
            main,
            chat_template=vocab.chat_template,
            stop_tokens=result.stop_tokens,
            system=system,
            license_text=source.license_text,
            adapter_file=adapter_file,
        )
        atomic_write_text(folder / MODELFILE, text)
        result.modelfile = True
    files = [f for f in (main, adapter_file) if f]
    atomic_write_text(folder / CARD, _card(source, files, result, adapter_file))
    return result


def _card(
    source: GGUFSource, files: list[str], result: GGUFExportResult, adapter_file: str | None
) -> str:
    meta = source.meta
    if "checkpoint" in meta:
        lora = None
        if source.model.is_lora:
            lora = "adapter" if adapter_file else "merged"
        head = model_card(
            meta["checkpoint"], meta["checkpoint_meta"], meta["license"], True, lora, "gguf"
        )
    else:
        head = registry_card(
            meta["name"],
            source.architecture,
            meta.get("lineage") or [],
            meta["license"],
            dataset_ids(meta.get("trained_on") or {}),
        )
    return head + gguf_section(files, result.stop_tokens, result.modelfile, adapter_file)
