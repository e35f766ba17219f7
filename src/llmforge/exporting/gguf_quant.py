"""K-quants (``q4_k_m`` and friends) through llama.cpp's own quantizer.

``gguf-py`` quantizes to Q8_0 only; the K-quant mixes (which tensor gets Q4_K, Q6_K, ...)
live in llama.cpp's ``llama_model_quantize``. ``llama-cpp-python`` ships it, so the exporter
writes an F16/BF16/F32 GGUF first and asks llama.cpp to quantize it. All metadata
(tokenizer, stop tokens, lineage, ``llmforge.*``) is copied as is; ``general.file_type``
becomes the mix.

K-quant blocks hold 256 values of a row. A tensor whose row length (``ne[0]``, the input
features of a linear layer) is not a multiple of 256 cannot be K-quantized, and llama.cpp
falls back per tensor (``tensor_type_fallback`` in ``llama-quant.cpp``): Q4_K -> Q5_0,
Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, and F16 if not even a multiple of 32.
:func:`quantize_gguf` reports how many tensors got each type, so a caller can tell.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gguf

from llmforge.errors import ExportError
from llmforge.untrusted import brief

# llama_ftype values (llama.h); the names are what `llama-quantize` accepts, lower-cased.
QUANT_FTYPES = {
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k_s": 11,
    "q3_k_m": 12,
    "q3_k_l": 13,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
}
_SOURCE_TYPES = {"F32", "F16", "BF16"}


@dataclass(frozen=True)
class QuantReport:
    """What llama.cpp wrote: the number of tensors of each GGML type."""

    types: dict[str, int]

    def fell_back(self, expected: set[str]) -> int:
        """Tensors of 2+ dimensions that did not get one of the ``expected`` types."""
        return sum(n for t, n in self.types.items() if t not in expected | {"F32"})


@contextmanager
def _quiet_llama_cpp() -> Iterator[None]:
    """Keep llama.cpp's per-tensor quantizer log (hundreds of lines, some printed by C stdio
    straight to the process's stdout/stderr) off the terminal: both descriptors point at
    /dev/null for the call, and C's buffers are flushed before they are put back."""
    import ctypes

    import llama_cpp._logger  # noqa: F401 - routes llama.cpp's own log through Python

    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    libc = ctypes.CDLL(None)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        log.setLevel(level)


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def tensor_types(path: Path) -> dict[str, int]:
    """GGML type name -> number of tensors, read from a GGUF file's tensor table.

    Only the header is walked (``gguf.GGUFReader`` builds every key's value first, 10 s for a
    Qwen vocabulary of 152k tokens).
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 24  # magic, version, tensor count, key count
        n_tensors, n_kv = struct.unpack_from("<QQ", m, 8)

        def skip(kind: int, pos: int) -> int:
            if kind == _STRING:
                return pos + 8 + struct.unpack_from("<Q", m, pos)[0]
            if kind == _ARRAY:
                item, n = struct.unpack_from("<IQ", m, pos)
                pos += 12
                if item in _SCALAR_SIZES:
                    return pos + n * _SCALAR_SIZES[item]
                for _ in range(n):
                    pos = skip(item, pos)
                return pos
            return pos + _SCALAR_SIZES[kind]

        for _ in range(n_kv):
            pos = skip(_STRING, pos)  # the key
            pos = skip(struct.unpack_from("<I", m, pos)[0], pos + 4)
        types: Counter[str] = Counter()
        for _ in range(n_tensors):
            pos = skip(_STRING, pos)
            n_dims = struct.unpack_from("<I", m, pos)[0]
            pos += 4 + 8 * n_dims
            types[gguf.GGMLQuantizationType(struct.unpack_from("<I", m, pos)[0]).name] += 1
            pos += 12  # type, offset
    return dict(types)


def require_quantizer(kind: str):
    """``llama_cpp`` when ``kind`` is a K-quant it can make (checked before any work).

    Raises:
        ExportError: If ``kind`` is unknown or llama-cpp-python is not installed.
    """
    if kind not in QUANT_FTYPES:
        raise ExportError(
            f"{brief(kind, 40)} is not a quantization llama.cpp's quantizer makes.",
            f"Use one of {', '.join(QUANT_FTYPES)}.",
        )
    try:
        import llama_cpp
    except ImportError as e:
        raise ExportError(
            f"Quantizing to {kind} needs llama.cpp's quantizer, from llama-cpp-python, which "
            "is not installed.",
            "Install it (pip install llama-cpp-python; pip compiles llama.cpp once, about 10 "
            "minutes), or export with --dtype f32, f16, bf16 or q8_0.",
        ) from e
    return llama_cpp


def quantize_gguf(src: Path, out: Path, kind: str, threads: int = 0) -> QuantReport:
    """Quantize the F32/F16/BF16 GGUF ``src`` into ``out`` with llama.cpp's quantizer.

    Args:
        src: A GGUF written by :func:`gguf_writer.write_gguf` with dtype f32/f16/bf16.
        out: The quantized GGUF (inside the export's temporary folder).
        kind: One of :data:`QUANT_FTYPES` (``q4_k_m`` ...).
        threads: Quantizer threads (0: all cores).

    Raises:
        ExportError: If llama-cpp-python is not installed, ``kind`` is unknown, ``src`` is
            already quantized, or llama.cpp fails.
    """
    llama_cpp = require_quantizer(kind)
    if not set(tensor_types(src)) <= _SOURCE_TYPES:
        raise ExportError(
            f"{src.name} is already quantized; quantizing it again would lose precision twice.",
            "Quantize from an f16, bf16 or f32 export.",
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[kind]
    params.nthread = threads
    with _quiet_llama_cpp():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0 or not out.is_file():
        raise ExportError(
            f"llama.cpp could not quantize the export to {kind} (code {rc}).",
            "Export with --dtype f16 or q8_0, or try another K-quant.",
        )
    return QuantReport(tensor_types(out))
