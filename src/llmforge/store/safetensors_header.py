"""safetensors headers, validated as safetensors itself validates them, and parameter counts.

Only each file's JSON header is read: no tensor is loaded and torch is not imported.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from llmforge.errors import UnsafeWeightsError
from llmforge.untrusted import brief

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit

# Bits per element of every dtype safetensors knows (its Rust ``Dtype``); sub-byte types pack.
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked the way safetensors itself checks it.

    Every tensor must have a known dtype, a shape of non-negative integers and data offsets
    that tile the data section exactly (in order, no gap or overlap, each span the size its
    shape and dtype say, the last ending at the end of the file). Only the header is read.

    Raises:
        UnsafeWeightsError: If the file is not a valid safetensors file (naming the tensor).
    """
    problem, header = _header(path)
    if problem is not None:
        raise _bad(path, problem)
    return header


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a valid safetensors file, or None (for reports that go on)."""
    return _header(path)[0]


def _header(path: Path) -> tuple[str | None, dict[str, Any]]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            return "it is shorter than a safetensors header", {}
        (length,) = struct.unpack("<Q", raw)
        size = os.fstat(f.fileno()).st_size
        if length > _MAX_HEADER or 8 + length > size:
            return f"its header length ({length:,} bytes) does not fit the file", {}
        text = f.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except RecursionError:
        return "its header is nested too deeply", {}
    except ValueError as e:  # JSON or UTF-8
        return f"its header is not JSON ({brief(str(e), 80)})", {}
    if not isinstance(header, dict):
        return "its header is not a JSON object", {}
    return _check_tensors(header, size - 8 - length), header


def _check_tensors(header: dict[str, Any], data_size: int) -> str | None:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return "its __metadata__ is not a map of text to text"
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            return f"the entry of tensor {brief(name, 60)} is not an object"
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BITS:
            return f"tensor {brief(name, 60)} has the unknown dtype {brief(dtype, 30)}"
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            return f"tensor {brief(name, 60)} has the shape {brief(shape, 60)}, not a list of sizes"
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
            return f"tensor {brief(name, 60)} has the data offsets {brief(offsets, 60)}"
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or offsets[1] - offsets[0] != bits // 8:
            return (
                f"tensor {brief(name, 60)} ({dtype} {shape}) needs {bits / 8:,.0f} bytes but its "
                f"offsets span {offsets[1] - offsets[0]:,}"
            )
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            where = f"starts at byte {start:,}, not {end:,}"
            return f"tensor {brief(name, 60)} {where} (a gap or an overlap)"
        end = stop
    if end != data_size:
        return f"its tensors cover {end:,} bytes but the file holds {data_size:,} after the header"
    return None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad(path: Path, why: str) -> UnsafeWeightsError:
    return UnsafeWeightsError(
        f"{path.name} is not a valid safetensors file: {why}.",
        "The download may be corrupted or the repository broken; re-import the model.",
    )


def count_parameters(files: list[Path]) -> int:
    """Sum the element counts of every tensor in the given safetensors files."""
    total = 0
    for path in files:
        for name, info in read_safetensors_header(path).items():
            if name != "__metadata__" and isinstance(info, dict):
                total += math.prod(int(d) for d in info.get("shape", []))
    return total
