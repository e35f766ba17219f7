"""Which device a run computes on (the ``device`` config key), whether bf16 pays on it, and
autocast for it."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from llmforge.errors import ConfigError
from llmforge.fsutil import atomic_write_json


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``device: auto | cpu | cuda``.

    ``auto`` picks CUDA when a GPU is visible, else the CPU. With several processes on one
    machine, process ``local_rank`` takes GPU ``local_rank`` (torchrun's convention).

    Raises:
        ConfigError: ``cuda`` was asked for but no GPU is usable, or there are fewer GPUs
            than processes on this machine.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda was asked for, but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}).",
            "Use device: auto or device: cpu, or install a CUDA build of torch on a GPU machine.",
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"Process {local_rank} on this machine needs GPU {local_rank}, but only {count} "
            f"GPU(s) are visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}).",
            "Start at most one process per GPU (--nproc / --nproc-per-node), or use device: cpu.",
        )
    return torch.device("cuda", local_rank)


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse bf16 on a GPU without bf16 support (it would be emulated, slowly).

    Raises:
        ConfigError: Naming the GPU and the alternative.
    """
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ConfigError(
            f"precision: bf16 needs a GPU with bf16 support; {name} has none.",
            "Use precision: fp32 on this GPU.",
        )


def bf16_is_fast(device: torch.device, rates_file: Path | None = None) -> tuple[bool, str]:
    """Whether bf16 computes faster than fp32 on ``device``, and what says so.

    ``precision: auto`` picks bf16 then. On a GPU: bf16 support (Ampere or newer). On a CPU,
    the AVX512-BF16 or AMX flags are not enough: some CPUs with them (seen: a Xeon without
    AMX) multiply bf16 at half the fp32 rate, and there every bf16 run trains slower. So a CPU
    with the flags has its fp32 and bf16 matmul rates measured (:func:`cpu_matmul_rates`),
    and bf16 is chosen only at :data:`BF16_MIN_SPEEDUP` or more. A CPU without the flags
    emulates bf16 and is not measured.

    Args:
        device: The device the run computes on.
        rates_file: Where measured rates are kept (default: :func:`default_rates_file`).
    """
    if device.type == "cuda":
        try:
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation argument
            ok = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'supports' if ok else 'has no'} bf16"
    if device.type != "cpu":
        return False, f"{device.type} devices train in fp32"
    found = [name for flag, name in _BF16_FLAGS if flag in _cpu_flags()]
    if not found:
        return False, "this CPU has no native bf16 (AVX512-BF16 or AMX)"
    fp32, bf16 = cpu_matmul_rates(rates_file)
    ratio = bf16 / fp32
    verdict = "at least" if ratio >= BF16_MIN_SPEEDUP else "below"
    return ratio >= BF16_MIN_SPEEDUP, (
        f"this CPU has {' and '.join(found)}; its bf16 matmuls run at {ratio:.1f}x the fp32 "
        f"rate ({bf16:.0f} vs {fp32:.0f} GFLOP/s, measured), {verdict} the "
        f"{BF16_MIN_SPEEDUP}x that pays for bf16's casts"
    )


_BF16_FLAGS = (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX"))

#: The bf16/fp32 matmul rate ratio from which bf16 trains faster. Two measured points: the
#: main job trained 1.5x faster in bf16 where bf16 matmuls ran 6x the fp32 rate (AMX), and
#: 0.78x where they ran 0.6x (AVX512-BF16 only); casts, norms and the optimizer stay fp32-bound,
#: so break-even sits near 1.4x.
BF16_MIN_SPEEDUP = 1.5

_MATMUL_SIZE = 1024  # big enough for the kernels a training step uses; ~0.2 s for both dtypes
_PROBE_SIZE = 256  # a first bf16 matmul, to find emulated bf16 before a 1024-square one
_MAX_MATMUL_S = 0.1  # a 1024-square bf16 matmul projected slower than this: measure at 256


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none), read once."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def default_rates_file() -> Path:
    """``$XDG_CACHE_HOME/llmforge/cpu_matmul.json`` (default ``~/.cache/llmforge/``).

    The rates describe the machine, not a project, so they live in the user's cache and never
    in a workspace: a refused run leaves its workspace exactly as it was.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmforge" / "cpu_matmul.json"


def _rates_key() -> str:
    """What the kept rates depend on: torch's kernels and the CPU's features."""
    flags = " ".join(sorted(_cpu_flags()))
    return f"torch {torch.__version__}, cpu flags {hashlib.sha256(flags.encode()).hexdigest()[:16]}"


_MEASURED: dict[str, tuple[float, float]] = {}  # this process's measurement, by key


def cpu_matmul_rates(rates_file: Path | None = None) -> tuple[float, float]:
    """(fp32, bf16) matmul GFLOP/s of this CPU, measured once per machine and torch.

    The processes of a multi-process run (and later runs) read one measurement from
    ``rates_file``, written atomically under a file lock: ranks timing each other could
    disagree and train in different dtypes. A damaged entry is measured again; a file that
    cannot be read or written is measured around and never stops a run.
    """
    key = _rates_key()
    if key in _MEASURED:
        return _MEASURED[key]
    try:
        path = rates_file or default_rates_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=120):
            kept = _read_rates(path)
            rates = _valid_rates(kept.get(key))
            if rates is None:
                rates = _measure_matmul_rates()
                atomic_write_json(path, {**kept, key: list(rates)})
    except (OSError, RuntimeError, Timeout):  # RuntimeError: no home folder to cache in
        rates = _measure_matmul_rates()
    _MEASURED[key] = rates
    return rates


def _read_rates(path: Path) -> dict[str, Any]:
    """The kept rates file as a dict (empty when missing or not a JSON object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):  # missing, not UTF-8 or not JSON
        return {}
    return data if isinstance(data, dict) else {}


def _valid_rates(entry: Any) -> tuple[float, float] | None:
    """A kept ``[fp32, bf16]`` entry, or None when it is damaged (re-measure then)."""
    if not isinstance(entry, list) or len(entry) != 2:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry):
        return None
    if not all(math.isfinite(v) and v > 0 for v in entry):
        return None
    return float(entry[0]), float(entry[1])


def _measure_matmul_rates() -> tuple[float, float]:
    """Time square fp32 and bf16 matmuls, alternating, best of 3 after a warm-up each.

    Where bf16 is emulated (about 1 GFLOP/s, seen on a CPU without the flags), a 1024-square
    bf16 matmul takes seconds; a 256-square probe finds that first and the rates are then
    measured at 256, so a measurement never takes more than a fraction of a second.
    """
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(_PROBE_SIZE, _PROBE_SIZE, generator=gen).bfloat16()  # [256, 256]
    start = time.perf_counter()
    torch.mm(probe, probe)
    projected = (time.perf_counter() - start) * (_MATMUL_SIZE / _PROBE_SIZE) ** 3
    n = _MATMUL_SIZE if projected < _MAX_MATMUL_S else _PROBE_SIZE
    a32 = torch.randn(n, n, generator=gen)  # [n, n]
    b32 = torch.randn(n, n, generator=gen)  # [n, n]
    pairs = {"fp32": (a32, b32), "bf16": (a32.bfloat16(), b32.bfloat16())}
    best = {name: math.inf for name in pairs}
    for a, b in pairs.values():
        torch.mm(a, b)  # warm-up: oneDNN builds its kernel on first use
    for _ in range(3):
        for name, (a, b) in pairs.items():
            start = time.perf_counter()
            torch.mm(a, b)
            best[name] = min(best[name], time.perf_counter() - start)
    flop = 2 * n**3
    return flop / best["fp32"] / 1e9, flop / best["bf16"] / 1e9


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device`` (a no-op context when ``enabled`` is False)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
