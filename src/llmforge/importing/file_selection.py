"""Which files of a model repository (or folder) an import takes, and what each one is.

Safetensors weights are preferred; pickled ``.bin`` weights are taken only when no
safetensors exist (they are converted). GGUF, ONNX and other runtimes' files, Python code
(never run: no ``trust_remote_code``) and subfolders are skipped.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

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


def path_problem(path: str) -> str | None:
    """Why a file name from a repository cannot be written into the workspace, or None.

    A repository (or a hub answering for one) names its files; those names become paths
    under ``models/``. A name is refused when it is empty, absolute, has an empty, ``.`` or
    ``..`` part, holds a backslash (a separator on Windows: ``..\\..\\evil.json``), or a
    control or format character (NUL, escape sequences, bidirectional overrides).
    """
    if not path:
        return "the name is empty"
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return "the name is an absolute path"
    if "\\" in path:
        return "the name holds a backslash (a path separator on Windows)"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in path):
        return "the name holds control characters"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "the name has an empty, '.' or '..' part"
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in path.split("/")):
        return "a part of the name is longer than 255 bytes"
    return None


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
        unsafe: Files refused because their names could not be written safely
            (see :func:`path_problem`); never downloaded or copied.
    """

    files: list[RemoteFile]
    skipped: list[str]
    pickled_weights: bool
    unsafe: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """The size of all selected files."""
        return sum(f.size for f in self.files)


def select_files(files: list[RemoteFile]) -> FileSelection:
    """Choose what a model needs: config, tokenizer, license/card and one copy of the weights.

    Safetensors weights are preferred; pickled ``.bin`` weights are taken only when no
    safetensors exist (they are converted later). GGUF, ONNX and other runtimes' files,
    Python code (never run: no ``trust_remote_code``) and subfolders are skipped; files whose
    names are unsafe (:func:`path_problem`) are refused and listed apart.

    Args:
        files: Every file of the repository.
    """
    unsafe = sorted(f.path for f in files if path_problem(f.path) is not None)
    files = [f for f in files if path_problem(f.path) is None]
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
    return FileSelection(chosen, skipped, pickled_weights=pickled, unsafe=unsafe)
