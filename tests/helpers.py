"""Test helpers: registered models without any download, workspace snapshots, CLI output."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from llmforge.store.model_files import build_manifest
from llmforge.store.registry import ModelEntry, ModelRegistry
from llmforge.workspace import Workspace

# Independent of llmforge.store.registry.NAME_PATTERN on purpose: the tests restate the rule.
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
    """sha256 of every file under ``root``, hidden ones included, and a marker per directory.

    The one "nothing was written" check of the suite: hidden folders (``models/.cache/hub``,
    ``models/.staging``, ``.tmp-`` checkpoint folders) are exactly where a refused command
    could leave something behind, so nothing is skipped but the registry's lock file (taking
    the lock is not a change of content). A symbolic link is recorded by its target, never
    followed, so a link pointing outside ``root`` (or nowhere) is compared as a link.
    """
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif name in dirnames:
                out[rel + "/"] = "dir"
            elif name != ".registry.lock":
                with open(p, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


def dir_size(root: Path) -> int:
    """Total bytes of the regular files under ``root`` (0 if it does not exist)."""
    if not root.exists():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def assert_unchanged(root: Path, before: dict[str, str]) -> None:
    """Assert that every file under ``root``, hidden ones included, hashes as in ``before``."""
    after = snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"changed under {root}: {changed[:12]}"


def greedy_text(home: Path, source: str, prompt: str, n: int) -> str:
    """``prompt`` and the greedy continuation that ``llmforge generate SOURCE -t 0 -n N`` should
    print, computed here with a full forward per token (no KV cache, no generate.py), stopping
    before the model's first stop token, plus the final newline."""
    import torch

    from llmforge.inference.model_source import load_for_inference

    adapter, _ = load_for_inference(Workspace(home.resolve()), source)
    adapter.model.eval()
    ids = adapter.tokenizer.encode(prompt)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = adapter.forward(torch.tensor([ids + new]))
            nxt = int(logits[0, -1].argmax())
            if nxt in adapter.stop_token_ids():
                break
            new.append(nxt)
    return prompt + adapter.tokenizer.decode(new) + "\n"


def run_on_terminal(home: Path, *args: str, typed: bytes, timeout: float = 120):
    """``python -m llmforge --home HOME ARGS`` with a real pseudo-terminal as stdin, on which
    ``typed`` is what the user types; stdout and stderr are captured (text).

    Returns:
        The ``subprocess.CompletedProcess``.
    """
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmforge", "--home", str(home), *args],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        slave = -1
        os.write(master, typed)
        out, err = proc.communicate(timeout=timeout)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def flat(text: str) -> str:
    """Collapse all whitespace (Rich wraps long lines) so phrases can be searched."""
    return " ".join(text.split())
