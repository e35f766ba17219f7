"""Which device a run computes on (the ``device`` config key), and autocast for it."""

from __future__ import annotations

import os

import torch

from llmforge.errors import ConfigError


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


def bf16_is_fast(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively (not emulated), and what says so.

    ``precision: auto`` picks bf16 then: a GPU with bf16 support (Ampere or newer), or a CPU
    with AVX512-BF16 or AMX (bf16 matmuls ~4x the fp32 rate; the main job trains 1.5x faster,
    benchmarks/README.md). Elsewhere bf16 is emulated and slower than fp32.
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
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    found = [name for flag, name in _BF16_FLAGS if flag in flags]
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "this CPU has no native bf16 (AVX512-BF16 or AMX)"


_BF16_FLAGS = (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX"))


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device`` (a no-op context when ``enabled`` is False)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
