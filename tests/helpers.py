"""Test helpers: registered models without any download, workspace snapshots, CLI output."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from llmforge.modelops import build_manifest
from llmforge.registry import ModelEntry, ModelRegistry
from llmforge.workspace import Workspace

# Independent of llmforge.registry.NAME_PATTERN on purpose: the tests restate the rule.
NAME_RE = r"[a-z0-9][a-z0-9._-]{0,63}"


def _safetensors_512() -> bytes:
    """A valid safetensors file of exactly 512 bytes (one U8 tensor), built by hand."""
    header = b'{"w":{"dtype":"U8","shape":[440],"data_offsets":[0,440]}}'.ljust(64)
    return len(header).to_bytes(8, "little") + header + (bytes(range(256)) * 2)[:440]


DEFAULT_FILES: Mapping[str, bytes] = {
    "config.json": b'{"model_type": "tiny"}\n',
    "model.safetensors": _safetensors_512(),
    "tokenizer/tokenizer.json": b'{"vocab": {"a": 0, "b": 1}}\n',
}


def make_model(
    ws: Workspace,
    name: str,
    *,
    files: Mapping[str, bytes] | None = None,
    local_path: str | None = None,
    fine_tuned_from: str | None = None,
    source: str = "local",
    architecture: str = "custom-transformer",
    model_id: str | None = None,
    num_parameters: int | None = 1234,
    write_files: bool = True,
) -> ModelEntry:
    """Write small files into ``models/<local_path>/``, build the manifest, register the entry.

    Returns:
        The entry as added to the registry.
    """
    local_path = local_path or name
    folder = ws.models_dir / local_path
    if write_files:
        for rel, data in (DEFAULT_FILES if files is None else files).items():
            p = folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    manifest = build_manifest(folder) if folder.is_dir() else {}
    entry = ModelEntry(
        model_name=name,
        model_id=model_id,
        source=source,
        architecture=architecture,
        local_path=local_path,
        files=manifest,
        num_parameters=num_parameters,
        disk_bytes=sum(f.size for f in manifest.values()),
        fine_tuned_from=fine_tuned_from,
        tokenizer="tiny-tok",
    )
    ModelRegistry(ws).add(entry)
    return entry


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file (and a marker for every directory) under ``root``.

    The registry's lock file is left out: taking the lock is not a change of content.
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            if f == ".registry.lock":
                continue
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def flat(text: str) -> str:
    """Collapse all whitespace (Rich wraps long lines) so phrases can be searched."""
    return " ".join(text.split())
