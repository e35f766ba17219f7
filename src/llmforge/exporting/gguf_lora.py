"""Write a PEFT LoRA adapter folder as a GGUF LoRA adapter llama.cpp applies on its base.

The layout is the one llama.cpp's ``convert_lora_to_gguf.py`` writes and
``llama-adapter.cpp`` reads: ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``, and for each adapted linear layer ``<base tensor>.lora_a`` (PEFT's
``lora_A.weight``, shape (r, in)) and ``<base tensor>.lora_b`` (``lora_B.weight``, shape
(out, r)), both as PEFT stores them (GGUF reverses the dimension order: ne = [in, r] and
[r, out]).

llama.cpp scales every pair by ``alpha / r`` with one file-wide alpha and the pair's own r
(``lora_b->ne[0]``). PEFT's scale can differ per module (``rank_pattern``,
``alpha_pattern``) or be ``alpha / sqrt(r)`` (rsLoRA); the file's alpha is chosen so the
common case needs no change, and any remaining per-module factor is folded into ``lora_b``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from llmforge.adapters.gguf_mapping import GGUFMapping
from llmforge.errors import ExportError
from llmforge.exporting.gguf_writer import (
    DTYPES,
    QT,
    GGUFInfo,
    WholeTensor,
    check_supported,
    convert_tensor,
    read_config,
    tensor_qtype,
    write_general,
)
from llmforge.untrusted import brief

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json``, refusing the PEFT features llama.cpp cannot apply.

    Raises:
        ExportError: If the file is missing, or the adapter is not a plain LoRA.
    """
    path = folder / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(
            f"The LoRA checkpoint's adapter_config.json is missing or not readable JSON "
            f"({type(e).__name__}).",
            "The checkpoint is damaged; export another checkpoint.",
        ) from e
    refusals = {
        "peft_type": (cfg.get("peft_type", "LORA") != "LORA", "is not a LoRA adapter"),
        "use_dora": (bool(cfg.get("use_dora")), "is a DoRA adapter"),
        "bias": (cfg.get("bias", "none") != "none", "trains biases"),
        "modules_to_save": (bool(cfg.get("modules_to_save")), "saves whole modules"),
        "fan_in_fan_out": (bool(cfg.get("fan_in_fan_out")), "uses fan_in_fan_out weights"),
        "lora_bias": (bool(cfg.get("lora_bias")), "trains a LoRA bias"),
        "trainable_token_indices": (bool(cfg.get("trainable_token_indices")), "trains tokens"),
        "layer_replication": (bool(cfg.get("layer_replication")), "replicates layers"),
        "target_parameters": (bool(cfg.get("target_parameters")), "adapts raw parameters"),
        "alora_invocation_tokens": (bool(cfg.get("alora_invocation_tokens")), "is an aLoRA"),
    }
    for key, (bad, what) in refusals.items():
        if bad:
            raise ExportError(
                f"The adapter {what} ({key}), which a GGUF LoRA adapter cannot carry.",
                "Export it merged into the base model instead (without --adapter).",
            )
    return cfg


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT matches rank_pattern / alpha_pattern keys as regexes against the module path end.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def module_scale(cfg: dict[str, Any], module: str) -> tuple[int, float]:
    """PEFT's (r, scale) for one adapted module."""
    r = int(_pattern_value(cfg.get("rank_pattern"), module, cfg["r"]))
    alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", r)))
    return r, alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def gguf_alpha(cfg: dict[str, Any]) -> float:
    """The file-wide alpha: llama.cpp's alpha / r then equals PEFT's default-module scale."""
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", r))
    return (alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)) * r


def _pairs(names: list[str]) -> dict[str, dict[str, str]]:
    pairs: dict[str, dict[str, str]] = {}
    for name in names:
        m = _PEFT_KEY.match(name)
        if m is None:
            raise ExportError(
                f"The adapter has a tensor {brief(name, 120)} that is not a LoRA A/B matrix.",
                "Export it merged into the base model instead (without --adapter).",
            )
        pairs.setdefault(m["module"], {})[m["ab"]] = name
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ExportError(
                f"The adapter's {module} has lora_{next(iter(ab))} without its pair.",
                "The checkpoint is damaged; export another checkpoint.",
            )
    return pairs


def _target(arch: GGUFMapping, module: str) -> str:
    name = arch.gguf_name(f"{module}.weight")
    if name is None or name.startswith(("token_embd", "output.")):
        raise ExportError(
            f"The adapter adapts {module}, which llama.cpp cannot apply as a GGUF LoRA "
            "(embeddings and tied output layers).",
            "Export it merged into the base model instead (without --adapter).",
        )
    return name


@dataclass
class LoraPlan:
    """A GGUF LoRA adapter, converted in memory (adapters are small) and ready to write.

    Attributes:
        mapping: The base architecture's GGUF mapping.
        dtype: The A/B matrices' type (a key of ``DTYPES``).
        alpha: ``adapter.lora.alpha``.
        tensors: (GGUF name, data, type, torch shape), in file order.
    """

    mapping: GGUFMapping
    dtype: str
    alpha: float
    tensors: list[tuple[str, np.ndarray, QT, tuple[int, ...]]]

    @property
    def nbytes(self) -> int:
        """About the file's size (bytes)."""
        return sum(t[1].nbytes for t in self.tensors) + (1 << 20)


def plan_lora(adapter_dir: Path, base_dir: Path, mapping: GGUFMapping, dtype: str) -> LoraPlan:
    """Check the PEFT adapter in ``adapter_dir`` and convert it for llama.cpp.

    Args:
        adapter_dir: adapter_config.json and adapter_model.safetensors.
        base_dir: The base model's Hugging Face folder (its config.json).
        mapping: The base architecture's GGUF mapping.
        dtype: ``f32``, ``f16``, ``bf16`` or ``q8_0`` for the A/B matrices.

    Raises:
        ExportError: If the adapter cannot be carried by a GGUF LoRA file.
    """
    from safetensors import safe_open

    cfg = read_adapter_config(adapter_dir)
    base_config = read_config(base_dir)
    check_supported(base_config, mapping)
    weights = adapter_dir / "adapter_model.safetensors"
    alpha = gguf_alpha(cfg)
    tensors: list[tuple[str, np.ndarray, QT, tuple[int, ...]]] = []
    with safe_open(weights, framework="pt") as f:
        pairs = _pairs(list(f.keys()))
        for module, ab in sorted(pairs.items()):
            target = _target(mapping, module)
            r, scale = module_scale(cfg, module)
            a, b = f.get_tensor(ab["A"]).float(), f.get_tensor(ab["B"]).float()  # (r, in), (out, r)
            if a.shape[0] != r or b.shape[1] != r:
                raise ExportError(
                    f"The adapter's {module} has rank {a.shape[0]}, but its config says {r}.",
                    "The checkpoint is damaged; export another checkpoint.",
                )
            factor = scale * r / alpha  # 1.0 unless rank/alpha patterns or rsLoRA differ
            if not math.isclose(factor, 1.0, rel_tol=1e-6):
                b = b * factor
            if (transform := mapping.transform_for(f"{module}.weight")) is not None:
                b = transform(b, base_config)  # it reorders output rows: W = B @ A
            for suffix, t in ((".lora_a", a), (".lora_b", b)):
                qtype = tensor_qtype(target + suffix, tuple(t.shape), DTYPES[dtype][0])
                tensors.append((target + suffix, convert_tensor(t, qtype), qtype, tuple(t.shape)))
    return LoraPlan(mapping, dtype, alpha, tensors)


def write_lora(plan: LoraPlan, out: Path, info: GGUFInfo) -> None:
    """Write the planned GGUF LoRA adapter to ``out`` (inside the export's temporary folder)."""
    writer = gguf.GGUFWriter(path=None, arch=plan.mapping.name)
    write_general(writer, info, DTYPES[plan.dtype][1], kind=gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, plan.alpha)
    for name, data, qtype, shape in plan.tensors:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), data.nbytes, raw_dtype=qtype)
    try:
        writer.write_header_to_file(path=out)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, data, _, _ in plan.tensors:
            writer.write_tensor_data(WholeTensor(data))
    finally:
        writer.close()
