"""The ``README.md`` of an export: base model, license, lineage and training summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmforge.data.hub_data import dataset_ids, hub_entries, lineage_text
from llmforge.store import lineage
from llmforge.store.registry import ModelRegistry
from llmforge.workspace import Workspace

_CARD_KEYS = (
    "learning_rate",
    "min_lr",
    "warmup_steps",
    "weight_decay",
    "batch_size",
    "grad_accum_steps",
    "block_size",
    "max_steps",
    "precision",
    "seed",
    "data_path",
)


def card_license(ws: Workspace, meta: dict[str, Any]) -> str | None:
    """The license the card names: the checkpoint's, else the nearest registered ancestor's."""
    if meta.get("license"):
        return str(meta["license"])
    registry = ModelRegistry(ws)
    names, _ = lineage.split(meta.get("lineage") or [])
    for name in names:
        if registry.exists(name) and registry.get(name).license:
            return registry.get(name).license
    return None


def model_card(
    ckpt: Path,
    meta: dict[str, Any],
    license_label: str | None,
    hf: bool,
    lora: str | None = None,
    library: str | None = None,
) -> str:
    """The ``README.md`` of an export: base model, license, lineage, training summary.

    ``lora`` is ``"adapter"`` for a PEFT adapter folder, ``"merged"`` for merged weights;
    ``library`` overrides the card's ``library_name`` (``gguf`` for a GGUF export).
    """
    chain = [str(x) for x in meta.get("lineage") or []]
    _, origin = lineage.split(chain)
    base = origin.removeprefix("hf:") if hf and origin and origin.startswith("hf:") else None
    front = ["---", f"license: {license_label or 'other'}"]
    if base:
        front.append(f"base_model: {base}")
    if datasets := dataset_ids(meta):
        front += ["datasets:", *(f"- {d}" for d in datasets)]
    if hf:
        library = library or ("peft" if lora == "adapter" else "transformers")
        front += [f"library_name: {library}", "pipeline_tag: text-generation"]
    front += ["tags:", "- llmforge", "- fine-tuned" if chain else "- from-scratch", "---", ""]
    run, step = meta.get("run_name") or ckpt.parent.parent.name, meta.get("step")
    title = f"# {run} (step {step})"
    if chain:
        about = f"Fine-tuned with llmforge from `{meta.get('fine_tuned_from')}`" + (
            f", whose base model is [{base}](https://huggingface.co/{base})." if base else "."
        )
    else:
        about = "A custom decoder-only Transformer trained from scratch with llmforge."
    settings, base_entry = meta.get("lora") or {}, (meta.get("base") or {}).get("model_name")
    if lora and settings:
        how = "This export holds only the" if lora == "adapter" else "The weights merge the"
        about += (
            f" {how} LoRA adapter (r={settings.get('r')}, alpha={settings.get('alpha')}, "
            f"target modules {', '.join(settings.get('target_modules') or [])}) trained on "
            f"the base `{base_entry}`."
        )
    lic = license_label or "unknown: check the base model's license before sharing"
    lines = [
        *front,
        title,
        "",
        about,
        "",
        f"- License: {lic}",
        f"- Architecture: {meta.get('architecture')}",
        f"- Tokenizer: {(meta.get('tokenizer') or {}).get('identifier')}"
        f" ({(meta.get('tokenizer') or {}).get('kind')})",
        "",
        "## Lineage",
        "",
    ]
    lines += [f"- {lineage.chain_text(f'run {run} step {step}', chain)}", ""]
    if hub := hub_entries(meta):
        lines += ["## Training data", ""]
        lines += [f"- {role}: {lineage_text(e)}" for role, e in hub.items()] + [""]
    cfg = meta.get("config") or {}
    lines += ["## Training", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {cfg.get(k)} |" for k in _CARD_KEYS if k in cfg]
    lines += [f"| fine_tune_started_at | {meta.get('fine_tune_started_at')} |"]
    lines += [
        f"| train_loss | {meta.get('train_loss')} |",
        f"| val_loss | {meta.get('val_loss')} |",
    ]
    return "\n".join(lines) + "\n"


def registry_card(
    name: str,
    architecture: str,
    chain: list[str],
    license_label: str | None,
    datasets: list[str] | None = None,
) -> str:
    """The ``README.md`` of a registry model's GGUF export: base model, license, lineage,
    the hub datasets it was trained on."""
    _, origin = lineage.split(chain)
    base = origin.removeprefix("hf:") if origin and origin.startswith("hf:") else None
    front = ["---", f"license: {license_label or 'other'}"]
    front += [f"base_model: {base}"] if base else []
    front += ["datasets:", *(f"- {d}" for d in datasets)] if datasets else []
    front += ["library_name: gguf", "pipeline_tag: text-generation", "tags:", "- llmforge"]
    lic = license_label or "unknown: check the base model's license before sharing"
    return "\n".join(
        [
            *front,
            "---",
            "",
            f"# {name}",
            "",
            f"The llmforge registry model `{name}` as GGUF.",
            "",
            f"- License: {lic}",
            f"- Architecture: {architecture}",
            "",
            "## Lineage",
            "",
            f"- {lineage.chain_text(f'model {name}', chain)}",
            "",
        ]
    )


def gguf_section(
    files: list[str], stop_tokens: list[str], modelfile: bool, adapter: str | None
) -> str:
    """The card's part on the GGUF files: what they are and how to run them."""
    lines = ["", "## GGUF", ""]
    lines += [f"- `{f}`" for f in files]
    stops = ", ".join(f"`{t}`" for t in stop_tokens)
    lines += ["", f"Generation stops at {stops} (the GGUF's eos / eot / eos_token_ids)."]
    main = next((f for f in files if f != adapter), None)
    if modelfile:
        lines += ["", "Ollama:", "", "```", "ollama create NAME -f Modelfile", "```"]
    if main:
        lora = f" --lora {adapter}" if adapter else ""
        lines += ["", "llama.cpp:", "", "```", f"llama-cli -m {main}{lora} -cnv", "```"]
    return "\n".join(lines) + "\n"
