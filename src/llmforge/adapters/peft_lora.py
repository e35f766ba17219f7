"""LoRA on any adapter's model, through ``peft``.

:func:`attach` wraps ``adapter.model`` in a ``peft`` model whose only trainable parameters
are the low-rank matrices; the adapter keeps working unchanged (its ``forward``,
``generation_step`` and ``describe`` reach the base model through ``peft``'s delegation).
``adapter.lora`` then holds the resolved settings, which is how the rest of llmforge tells a
LoRA adapter from a full model (:func:`is_lora`).

Files are ``peft``'s own format (``adapter_model.safetensors`` + ``adapter_config.json``), so
``peft.PeftModel.from_pretrained(base, folder)`` loads what :func:`save` writes.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

from llmforge.adapters.base import ModelAdapter
from llmforge.errors import CheckpointError, ConfigError
from llmforge.untrusted import load_json

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
GENERATION_CONFIG = "generation_config.json"

_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Per architecture: the attention and MLP projections (never the embedding or the output).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "qwen2": _PROJECTIONS,
    "qwen3": _PROJECTIONS,
    "custom-transformer": ["qkv", "proj", "fc"],
}


def default_targets(architecture: str) -> list[str]:
    """The modules LoRA adapts by default for ``architecture``.

    Raises:
        ConfigError: If the architecture has no default (then ``lora.target_modules`` is needed).
    """
    if architecture not in DEFAULT_TARGETS:
        raise ConfigError(
            f"llmforge has no default LoRA target modules for {architecture!r} models.",
            "Name them in the config: lora: {target_modules: [q_proj, v_proj]} (the names of "
            "the model's linear layers).",
        )
    return list(DEFAULT_TARGETS[architecture])


def resolve_settings(architecture: str, lora: Any) -> dict[str, Any]:
    """The ``lora:`` config section with the architecture's default targets filled in."""
    raw = lora.model_dump(mode="json") if hasattr(lora, "model_dump") else dict(lora)
    targets = raw.get("target_modules") or default_targets(architecture)
    return {
        "r": int(raw["r"]),
        "alpha": float(raw["alpha"]),
        "dropout": float(raw["dropout"]),
        "target_modules": sorted(set(targets)),
    }


def is_lora(adapter: ModelAdapter) -> bool:
    """Whether ``adapter.model`` carries LoRA adapters (see :func:`attach`)."""
    return getattr(adapter, "lora", None) is not None


def attach(adapter: ModelAdapter, settings: dict[str, Any]) -> None:
    """Wrap ``adapter.model`` with fresh LoRA adapters; freeze everything else.

    The new matrices are initialised from torch's global RNG (seed it first for a
    reproducible run); B starts at zero, so the model computes exactly what the base does.

    Raises:
        ConfigError: If no module of the model matches ``target_modules``.
    """
    from peft import LoraConfig, get_peft_model

    hf = adapter.architecture != "custom-transformer"
    config = LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=list(settings["target_modules"]),
        bias="none",
        task_type="CAUSAL_LM" if hf else None,
    )
    linear = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in adapter.model.named_modules()
            if type(m).__name__ == "Linear"
        }
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adapter.model = get_peft_model(adapter.model, config)
    except ValueError as e:
        raise ConfigError(
            f"lora.target_modules {settings['target_modules']} match no layer of this "
            f"{adapter.architecture} model ({e}).",
            f"Its linear layers are named: {', '.join(linear)}.",
        ) from e
    adapter.lora = {**settings, "parameters": adapter.num_parameters(trainable_only=True)}


def save(adapter: ModelAdapter, folder: Path) -> None:
    """Write the adapter (``peft`` format) and, for ``transformers`` models, the generation
    config (it records stop tokens added for chat fine-tuning)."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter.model.save_pretrained(str(folder), safe_serialization=True)
        gen = getattr(adapter.model, "generation_config", None)
        if gen is not None and adapter.architecture != "custom-transformer":
            gen.save_pretrained(str(folder))
    with contextlib.suppress(FileNotFoundError):
        (folder / "README.md").unlink()  # peft's generic card; exports write their own


def load_weights(adapter: ModelAdapter, folder: Path) -> None:
    """Load the adapter weights that :func:`save` wrote into an :func:`attach`-ed adapter.

    Raises:
        CheckpointError: If the file is missing, corrupt, or does not fit the adapters.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path} is missing.", "Use another checkpoint of the run.")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(
            f"Cannot read the LoRA weights {path}: {e}.", "Use another checkpoint of the run."
        ) from e
    expected = {n for n, _ in adapter.model.named_parameters() if "lora_" in n}
    result = set_peft_model_state_dict(adapter.model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing or len(state) != len(expected):
        raise CheckpointError(
            f"The LoRA weights in {path} do not fit the adapters described by its metadata "
            f"({len(state)} tensors for {len(expected)} adapter parameters).",
            "The checkpoint is damaged or was edited; use another checkpoint of the run.",
        )
    gen = folder / GENERATION_CONFIG
    if gen.is_file() and adapter.architecture != "custom-transformer":
        from transformers import GenerationConfig

        # On the base model: generation and merge_and_unload read it there.
        adapter.model.get_base_model().generation_config = GenerationConfig.from_pretrained(
            str(folder)
        )


def merge(adapter: ModelAdapter) -> None:
    """Fold the LoRA update into the base weights and drop the ``peft`` wrapper (in place)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter.model = adapter.model.merge_and_unload()
    adapter.lora = None


def set_base_reference(folder: Path, base: str) -> None:
    """Point ``adapter_config.json``'s ``base_model_name_or_path`` at ``base`` (a hub id)."""
    path = folder / ADAPTER_CONFIG
    data = load_json(path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
