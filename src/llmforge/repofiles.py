"""Which files of a model repository (or folder) an import takes, and what each one is.

Safetensors weights are preferred; pickled ``.bin`` weights are taken only when no
safetensors exist (they are converted). GGUF, ONNX and other runtimes' files, Python code
(never run: no ``trust_remote_code``) and subfolders are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Weight formats llmforge never downloads: duplicates of the safetensors weights, or formats
# for other runtimes. Pickled .bin weights are fetched only when no safetensors exist.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SKIP_SUFFIXES = (".gguf", ".onnx", ".onnx_data", ".h5", ".msgpack", ".ot", ".tflite", ".mlmodel")
_KEEP_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".tiktoken", ".jinja", ".md")
_LICENSE_FILE = re.compile(r"(LICEN[CS]E|COPYING|NOTICE)([._-].*)?", re.IGNORECASE)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository at a commit.

    Attributes:
        path: Its path in the repository.
        size: Its size in bytes.
        blob_id: Its git blob sha1 (the hub's ``oid``).
        sha256: The sha256 the hub advertises for LFS files, else None.
    """

    path: str
    size: int
    blob_id: str | None = None
    sha256: str | None = None


def is_license_file(name: str) -> bool:
    """Whether a top-level file name is a license file (LICENSE, LICENSE.txt, COPYING, ...)."""
    return "/" not in name and bool(_LICENSE_FILE.fullmatch(name))


@dataclass
class FileSelection:
    """Which files of a repository an import takes.

    Attributes:
        files: The files to download.
        skipped: Files left out (duplicate weights, other runtimes, code, subfolders).
        pickled_weights: True when the weights exist only as pickled ``.bin`` files.
    """

    files: list[RemoteFile]
    skipped: list[str]
    pickled_weights: bool

    @property
    def total_bytes(self) -> int:
        """The size of all selected files."""
        return sum(f.size for f in self.files)


def select_files(files: list[RemoteFile]) -> FileSelection:
    """Choose what a model needs: config, tokenizer, license/card and one copy of the weights.

    Safetensors weights are preferred; pickled ``.bin`` weights are taken only when no
    safetensors exist (they are converted later). GGUF, ONNX and other runtimes' files,
    Python code (never run: no ``trust_remote_code``) and subfolders are skipped.

    Args:
        files: Every file of the repository.
    """
    has_safetensors = any(f.path.endswith(".safetensors") and "/" not in f.path for f in files)
    chosen: list[RemoteFile] = []
    skipped: list[str] = []
    pickled = False
    for f in sorted(files, key=lambda f: f.path):
        name = f.path
        keep = "/" not in name and (
            name.endswith(_KEEP_SUFFIXES) or bool(_LICENSE_FILE.fullmatch(name))
        )
        if name.endswith(_SKIP_SUFFIXES):
            keep = False
        elif name.endswith(_PICKLE_SUFFIXES) and "/" not in name:
            keep = not has_safetensors and name.endswith(".bin")
            pickled = pickled or keep
        elif name.endswith(".bin.index.json"):
            keep = not has_safetensors
        if keep:
            chosen.append(f)
        else:
            skipped.append(name)
    return FileSelection(chosen, skipped, pickled_weights=pickled)
