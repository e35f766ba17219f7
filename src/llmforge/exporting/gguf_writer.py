"""Write a Hugging Face causal-LM folder as one GGUF file llama.cpp loads as is.

Only the ``gguf`` package (llama.cpp's gguf-py, pure Python) is used: no llama.cpp checkout,
no compiler. Tensors stream: the tensor table is planned from the safetensors headers alone
(names, shapes, dtypes) and written first; then each 2-D tensor is read from its memory map,
converted and written in chunks of rows (:class:`RowChunks`), so no full tensor, let alone a
second copy of the model, is ever in memory (``benchmarks/bench_gguf.py``).

Tensor types follow ``convert_hf_to_gguf.py``: 1-D tensors and norms stay F32; every other
tensor gets the requested type; ``q8_0`` falls back to F16 for rows that are not a multiple
of its 32-value block. K-quants are made afterwards by llama.cpp's own quantizer
(``gguf_quant.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from llmforge.adapters.gguf_mapping import GGUFMapping
from llmforge.errors import ExportError
from llmforge.exporting.gguf_vocab import VocabMeta, read_vocab, write_vocab
from llmforge.untrusted import brief

QT = gguf.GGMLQuantizationType
DTYPES: dict[str, tuple[QT, gguf.LlamaFileType]] = {
    "f32": (QT.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (QT.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (QT.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (QT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
Progress = Callable[[int, int], None]  # (bytes written, total bytes)


@dataclass(frozen=True)
class BaseModel:
    """One link of the lineage (``general.base_model.N.*``): from the hub id down."""

    name: str
    organization: str | None = None
    repo_url: str | None = None


@dataclass(frozen=True)
class TrainingDataset:
    """One hub dataset trained on (``general.dataset.N.*``); ``version`` is its commit sha."""

    name: str
    organization: str | None = None
    repo_url: str | None = None
    version: str | None = None


@dataclass
class GGUFInfo:
    """The metadata an export adds besides the weights and the tokenizer.

    Attributes:
        name: ``general.name``.
        license: ``general.license`` (an SPDX id or ``other``).
        base_models: The lineage, nearest parent first.
        datasets: The hub datasets the model was trained (and validated) on.
        custom: ``llmforge.*`` keys (without the prefix): step, manifest pointer, run.
    """

    name: str
    license: str | None = None
    base_models: list[BaseModel] = field(default_factory=list)
    datasets: list[TrainingDataset] = field(default_factory=list)
    custom: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the output: where it comes from and what it becomes."""

    hf_name: str
    file: Path
    gguf_name: str
    shape: tuple[int, ...]
    qtype: QT
    transform: Callable[[Any, dict[str, Any]], Any] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data in the GGUF file."""
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape[:-1]) * (self.shape[-1] // block) * size


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face folder.

    Raises:
        ExportError: If it is missing or not a JSON object.
    """
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(
            f"The model's config.json is missing or not readable JSON ({type(e).__name__}).",
            "The checkpoint is incomplete or damaged; export another checkpoint.",
        ) from e
    if not isinstance(config, dict):
        raise ExportError(
            "The model's config.json is not a JSON object.",
            "The checkpoint is damaged; export another checkpoint.",
        )
    return config


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for a single or a sharded checkpoint.

    Raises:
        ExportError: If the folder has no safetensors weights.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        files = {name: folder / str(file) for name, file in weight_map.items()}
        if any(p.parent != folder or not p.is_file() for p in files.values()):
            raise ExportError(
                "The model's model.safetensors.index.json names a shard that is not a file "
                "beside it.",
                "The checkpoint is damaged; export another checkpoint.",
            )
        return files
    single = folder / "model.safetensors"
    if not single.is_file():
        raise ExportError(
            "The model has no model.safetensors (nor a shard index).",
            "The checkpoint is incomplete; export another checkpoint.",
        )
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def tensor_qtype(gguf_name: str, shape: tuple[int, ...], target: QT) -> QT:
    """The GGUF type of one tensor when the file's type is ``target``."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return QT.F32  # llama.cpp computes norms and biases in F32
    block, _ = gguf.GGML_QUANT_SIZES[target]
    if shape[-1] % block != 0:
        return QT.F16
    return target


def plan_tensors(folder: Path, arch: GGUFMapping, config: dict[str, Any], target: QT):
    """The output's tensor table, from the safetensors headers alone (no data is read).

    Raises:
        ExportError: If a tensor has no mapping, or an untied model lacks ``lm_head``.
    """
    from safetensors import safe_open

    files = weight_files(folder)
    tied = bool(config.get("tie_word_embeddings", False))
    plan: list[PlannedTensor] = []
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            for name in sorted(names):
                gguf_name = arch.gguf_name(name)
                if gguf_name is None or (tied and gguf_name == "output.weight"):
                    continue  # a buffer, or the tied copy llama.cpp takes from token_embd
                shape = tuple(f.get_slice(name).get_shape())
                qtype = tensor_qtype(gguf_name, shape, target)
                plan.append(
                    PlannedTensor(name, file, gguf_name, shape, qtype, arch.transform_for(name))
                )
    names = {p.gguf_name for p in plan}
    if not tied and "output.weight" not in names:
        raise ExportError(
            "config.json says the embeddings are not tied, but the weights have no lm_head.",
            "The checkpoint is incomplete; export it again.",
        )
    return sorted(plan, key=_tensor_order)


def _tensor_order(p: PlannedTensor) -> tuple[int, int, str]:
    # token_embd first, blocks in order, output last (the order llama.cpp's converter writes).
    parts = p.gguf_name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), p.gguf_name)
    return (0 if parts[0] == "token_embd" else 2, 0, p.gguf_name)


def convert_tensor(data: Any, qtype: QT) -> np.ndarray:
    """A torch tensor as the bytes of a GGUF tensor of type ``qtype``."""
    import torch

    if qtype == QT.F32:
        return data.to(torch.float32).numpy()
    if qtype == QT.F16:
        return data.to(torch.float16).numpy()
    if qtype == QT.BF16:
        return data.to(torch.bfloat16).view(torch.int16).numpy()
    return gguf.quants.quantize(data.to(torch.float32).numpy(), qtype)


def check_supported(config: dict[str, Any], mapping: GGUFMapping) -> None:
    """Refuse a config the mapping cannot express in GGUF (checked before anything is written).

    Raises:
        ExportError: For another ``architectures`` entry than the mapping's, sliding-window
            attention, or RoPE scaling.
    """
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if not set(archs) & set(mapping.hf_architectures):
        raise ExportError(
            f"config.json names the architecture {brief('/'.join(archs) or 'none', 80)}, "
            f"which the {mapping.name} GGUF mapping does not cover "
            f"({', '.join(mapping.hf_architectures)}).",
            "The checkpoint's files do not match its architecture; export it with --format hf.",
        )
    if config.get("use_sliding_window"):
        raise ExportError(
            f"The model uses sliding-window attention (use_sliding_window), which the "
            f"{mapping.name} GGUF export does not write: llama.cpp would attend to the whole "
            "context and compute different outputs.",
            "Export it with --format hf, or train with use_sliding_window false.",
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else rope
    if kind not in ("default", None):
        raise ExportError(
            f"The model uses {brief(kind, 40)} RoPE scaling, which GGUF export does not write "
            "yet: llama.cpp would compute different outputs past the original context.",
            "Export it with --format hf, or use a model without rope_scaling.",
        )


def write_general(
    writer: gguf.GGUFWriter,
    info: GGUFInfo,
    ftype: gguf.LlamaFileType,
    kind: str = gguf.GGUFType.MODEL,
) -> None:
    """``general.*`` (type, name, license, lineage, datasets, file type) and ``llmforge.*``."""
    writer.add_type(kind)
    writer.add_name(info.name)
    if info.license:
        writer.add_license(info.license)
    if info.base_models:
        writer.add_base_model_count(len(info.base_models))
        for i, base in enumerate(info.base_models):
            writer.add_base_model_name(i, base.name)
            if base.organization:
                writer.add_base_model_organization(i, base.organization)
            if base.repo_url:
                writer.add_base_model_repo_url(i, base.repo_url)
    if info.datasets:
        writer.add_dataset_count(len(info.datasets))
        for i, ds in enumerate(info.datasets):
            writer.add_dataset_name(i, ds.name)
            for value, add in (
                (ds.organization, writer.add_dataset_organization),
                (ds.repo_url, writer.add_dataset_repo_url),
                (ds.version, writer.add_dataset_version),
            ):
                if value:
                    add(i, value)
    for key, value in info.custom.items():
        full = f"llmforge.{key}"
        if isinstance(value, bool):
            writer.add_bool(full, value)
        elif isinstance(value, int):
            writer.add_uint64(full, value)
        elif isinstance(value, float):
            writer.add_float64(full, value)
        else:
            writer.add_string(full, str(value))
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_hparams(writer: gguf.GGUFWriter, arch: GGUFMapping, config: dict[str, Any]) -> None:
    for key, kind, value in arch.hparam_values(config):
        if kind == "f32":
            writer.add_float32(key, float(value))
        else:
            writer.add_uint32(key, int(value))


# Rows are read, converted and written in chunks of about this many values (64 MiB in
# F32), so even the 136M-value embedding of a Qwen never has a full F32 copy in memory.
CHUNK_VALUES = 1 << 24


def write_array(fp: Any, data: np.ndarray) -> None:
    """Write an array's bytes through the file object: ``ndarray.tofile`` reports a full disk
    as "N requested and M written" without the OS's errno, which callers must see."""
    fp.write(np.ascontiguousarray(data).data.cast("B"))


class WholeTensor:
    """A converted tensor for ``GGUFWriter.write_tensor_data``, written by :func:`write_array`."""

    def __init__(self, data: np.ndarray) -> None:
        self._data, self.nbytes = data, data.nbytes

    def tofile(self, fp: Any) -> None:
        """Write the bytes."""
        write_array(fp, self._data)


class RowChunks:
    """One tensor's GGUF bytes, produced chunk of rows by chunk of rows as it is written.

    ``GGUFWriter.write_tensor_data`` only needs ``nbytes`` and ``tofile`` (gguf-py's own
    newer ``LazyChunkedTensor`` relies on the same). Row chunks are exact for every type:
    quantization blocks never cross a row.
    """

    def __init__(self, st_slice: Any, p: PlannedTensor) -> None:
        self._slice, self._p = st_slice, p
        self.nbytes = p.nbytes

    def tofile(self, fp: Any) -> None:
        """Convert and write the rows, one chunk at a time."""
        rows = self._p.shape[0]
        step = max(1, CHUNK_VALUES // max(1, math.prod(self._p.shape[1:])))
        for start in range(0, rows, step):
            write_array(fp, convert_tensor(self._slice[start : start + step], self._p.qtype))


def stream_tensors(
    writer: gguf.GGUFWriter,
    plan: list[PlannedTensor],
    config: dict[str, Any],
    progress: Progress | None,
) -> None:
    """Write each planned tensor's data, reading one tensor (or chunk of rows) at a time."""
    from safetensors import safe_open

    total, done = sum(p.nbytes for p in plan), 0
    for p in plan:
        # A fresh mapping per tensor: its pages leave the process with it, so resident
        # memory stays at one tensor instead of growing to the whole checkpoint.
        with safe_open(p.file, framework="pt") as f:
            if p.transform is None and len(p.shape) == 2:
                writer.write_tensor_data(RowChunks(f.get_slice(p.hf_name), p))
            else:  # a row permutation needs the whole (small) tensor
                data = f.get_tensor(p.hf_name)
                if p.transform is not None:
                    data = p.transform(data, config)
                writer.write_tensor_data(WholeTensor(convert_tensor(data, p.qtype)))
                del data
        done += p.nbytes
        if progress is not None:
            progress(done, total)


@dataclass
class GGUFPlan:
    """Everything a GGUF file will hold, decided before a byte of it is written.

    Attributes:
        mapping: The architecture's GGUF mapping.
        config: The model's ``config.json``.
        dtype: The file's type (a key of :data:`DTYPES`).
        tensors: The tensor table, in file order.
        vocab: The ``tokenizer.*`` metadata.
    """

    mapping: GGUFMapping
    config: dict[str, Any]
    dtype: str
    tensors: list[PlannedTensor]
    vocab: VocabMeta

    @property
    def nbytes(self) -> int:
        """About the file's size: tensor data plus the vocabulary (bytes)."""
        return sum(p.nbytes for p in self.tensors) + 64 * len(self.vocab.tokens) + (1 << 20)


def plan_gguf(
    folder: Path, mapping: GGUFMapping, dtype: str, chat_template: str | None = None
) -> GGUFPlan:
    """Check the Hugging Face model in ``folder`` and plan its GGUF file (reads headers only).

    Args:
        folder: config.json, model.safetensors (or shards), tokenizer files and
            generation_config.json.
        mapping: The architecture's GGUF mapping (validated against gguf-py here).
        dtype: ``f32``, ``f16``, ``bf16`` or ``q8_0``.
        chat_template: The template the model was trained with (None: the tokenizer's).

    Raises:
        ExportError: If the model cannot be written as GGUF.
    """
    if dtype not in DTYPES:
        raise ExportError(
            f"{brief(dtype, 40)} is not a GGUF type this export writes.",
            f"Use --dtype {', '.join(DTYPES)} (or a K-quant such as q4_k_m).",
        )
    mapping.validate()
    config = read_config(folder)
    check_supported(config, mapping)
    tensors = plan_tensors(folder, mapping, config, DTYPES[dtype][0])
    n_rows = next((p.shape[0] for p in tensors if p.gguf_name == "token_embd.weight"), None)
    if n_rows is None:
        raise ExportError(
            "The model's weights have no token embedding.",
            "The checkpoint is incomplete; export another checkpoint.",
        )
    vocab = read_vocab(folder, mapping, n_rows, config, chat_template)
    return GGUFPlan(mapping, config, dtype, tensors, vocab)


def write_gguf(plan: GGUFPlan, out: Path, info: GGUFInfo, progress: Progress | None = None) -> None:
    """Write the planned GGUF file to ``out`` (inside the export's temporary folder).

    Args:
        plan: What :func:`plan_gguf` decided.
        out: The file to write.
        info: Name, license, lineage and ``llmforge.*`` keys.
        progress: Called with (bytes written, total bytes) after each tensor.
    """
    writer = gguf.GGUFWriter(path=None, arch=plan.mapping.name)
    write_general(writer, info, DTYPES[plan.dtype][1])
    _write_hparams(writer, plan.mapping, plan.config)
    write_vocab(writer, plan.vocab)
    for p in plan.tensors:
        writer.add_tensor_info(
            p.gguf_name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype
        )
    try:
        writer.write_header_to_file(path=out)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        stream_tensors(writer, plan.tensors, plan.config, progress)
    finally:
        writer.close()
