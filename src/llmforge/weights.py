"""Weight files: parameter counts from safetensors headers, and pickled ``.bin`` conversion.

Counting reads only each safetensors file's JSON header (no tensor is loaded). Conversion
loads pickled weights with ``torch.load(weights_only=True)``, which refuses any pickle that
would run code, and writes safetensors; torch is imported only when converting.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
import zipfile
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


def refused_pickle(name: str, error: BaseException) -> UnsafeWeightsError:
    """The error for a pickle ``torch.load(weights_only=True)`` would not load.

    torch's own message ends in advice to load the file with ``weights_only=False``, which
    runs whatever code the pickle holds; it is never passed on.
    """
    if "weights only load failed" in str(error).lower():
        return UnsafeWeightsError(
            f"{name} was refused: it is a pickle that holds more than tensors, and loading it "
            "could run code on this machine (llmforge loads pickles only with torch's "
            "weights_only=True, which stopped it; nothing from it ran).",
            "Use a repository or checkpoint that provides safetensors weights. Never load a "
            "file you do not trust with weights_only=False: that runs its code.",
        )
    return UnsafeWeightsError(
        f"{name} is not a readable tensor checkpoint ({type(error).__name__}); it may be "
        "truncated or corrupt. Nothing from it was loaded.",
        "Download it again, or use a repository that provides safetensors weights.",
    )


def safetensors_name(bin_name: str) -> str:
    """The safetensors file name for a pickled weights file.

    ``pytorch_model.bin`` -> ``model.safetensors``;
    ``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors``.
    """
    stem = bin_name[: -len(".bin")] if bin_name.endswith(".bin") else bin_name
    stem = re.sub(r"^pytorch_model", "model", stem)
    return f"{stem}.safetensors"


def convert_pickled(sources: dict[str, Path], out_dir: Path) -> list[str]:
    """Convert pickled ``.bin`` weights (one file or shards with an index) to safetensors.

    Tensors that share storage (tied weights) are cloned, since safetensors stores each
    tensor on its own. A ``pytorch_model.bin.index.json`` is rewritten as
    ``model.safetensors.index.json``.

    Args:
        sources: Repository file name to local path, for the ``.bin`` files and the optional
            ``pytorch_model.bin.index.json``.
        out_dir: Where the safetensors files are written.

    Returns:
        The names of the files written.

    Raises:
        UnsafeWeightsError: If a file holds anything but tensors (the pickle is refused
            without running it) or cannot be read.
    """
    import pickle

    import torch
    from safetensors.torch import save_file

    written: list[str] = []
    renames: dict[str, str] = {}
    for name, path in sorted(sources.items()):
        if not name.endswith(".bin"):
            continue
        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols: noise here
                warnings.simplefilter("ignore")
                # mmap needs torch's zip format; a legacy (pre-1.6) pickle is read whole.
                state = torch.load(
                    path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
                )
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
            raise refused_pickle(name, e) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise UnsafeWeightsError(
                f"{name} does not hold a mapping of tensor names to tensors.",
                "Use a repository that provides safetensors weights.",
            )
        seen: set[int] = set()
        tensors: dict[str, torch.Tensor] = {}
        for key in sorted(state):
            t = state[key]
            ptr = t.untyped_storage().data_ptr() if t.numel() else -1
            shared = ptr in seen
            seen.add(ptr)
            tensors[key] = t.detach().clone().contiguous() if shared else t.contiguous()
        out = safetensors_name(name)
        save_file(tensors, str(out_dir / out), metadata={"format": "pt"})
        renames[name] = out
        written.append(out)
    index = sources.get("pytorch_model.bin.index.json")
    if index is not None:
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: renames.get(v, v) for k, v in data.get("weight_map", {}).items()}
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps(data, indent=2) + "\n", encoding="utf-8"
        )
        written.append("model.safetensors.index.json")
    return written
