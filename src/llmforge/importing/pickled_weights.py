"""Pickled ``.bin`` weights converted to safetensors.

Conversion loads pickled weights with ``torch.load(weights_only=True)``, which refuses any
pickle that would run code, and writes safetensors; torch is imported only when converting.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path

from llmforge.errors import UnsafeWeightsError
from llmforge.untrusted import load_json


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
        data = load_json(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: renames.get(v, v) for k, v in data.get("weight_map", {}).items()}
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps(data, indent=2) + "\n", encoding="utf-8"
        )
        written.append("model.safetensors.index.json")
    return written
