"""Weight files: parameter counts from safetensors headers, and pickled ``.bin`` conversion.

Counting reads only each safetensors file's JSON header (no tensor is loaded). Conversion
loads pickled weights with ``torch.load(weights_only=True)``, which refuses any pickle that
would run code, and writes safetensors; torch is imported only when converting.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from llmforge.errors import UnsafeWeightsError

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names to dtype, shape and offsets).

    Raises:
        UnsafeWeightsError: If the file is not a valid safetensors file.
    """
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise _bad(path, "it is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise _bad(path, "its header is implausibly large")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _bad(path, f"its header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    return header


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
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
            raise UnsafeWeightsError(
                f"{name} is not a plain tensor checkpoint; llmforge refused to unpickle it "
                f"(loading with weights_only=True failed: {str(e).splitlines()[0][:200]}).",
                "Pickled weights can run code when loaded. Use a repository that provides "
                "safetensors weights.",
            ) from None
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
