"""The rules that shape a :class:`~llmforge.config.TrainingConfig` beyond each key's type.

- Optimisation defaults by what is trained: a from-scratch model wants a large learning rate
  and weight decay, a pretrained model a gentle one (2e-3 would wreck it), LoRA adapters
  something between; the shipped configs' values.
- ``--max-steps N`` runs N steps: a warmup that does not fit is capped, with a note.
- Run names are plain, short folder names.
"""

from __future__ import annotations

from typing import Any

DEFAULT_WARMUP = 30

# The shipped configs' values (configs/custom-transformer.yaml, qwen-base.yaml, qwen-lora.yaml).
# min_lr defaults to a tenth of the learning rate, an unset warmup is at most a tenth of the run.
KIND_DEFAULTS: dict[str, dict[str, float | int]] = {
    "from scratch": {"learning_rate": 2e-3, "weight_decay": 0.1, "warmup_steps": DEFAULT_WARMUP},
    "full fine-tune": {"learning_rate": 2e-5, "weight_decay": 0.0, "warmup_steps": 10},
    "LoRA": {"learning_rate": 2e-4, "weight_decay": 0.0, "warmup_steps": 10},
}
KIND_PHRASES = {
    "from scratch": "training from scratch",
    "full fine-tune": "a full fine-tune",
    "LoRA": "LoRA",
}

# Run names are folder names under output_dir: printable, short (ENAMETOOLONG must never
# surface), never hidden (llmforge's own temporary names start with '.').
MAX_RUN_NAME_LENGTH = 100
MAX_SEED = 2**32 - 1  # what torch, numpy and random all accept


def kind_of(model_name: object, finetune: object) -> str:
    if model_name is None:
        return "from scratch"
    return "LoRA" if finetune == "lora" else "full fine-tune"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fill_defaults(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``data`` with the kind-dependent defaults filled in, which ones (and why), and notes."""
    kind = kind_of(data.get("model_name"), data.get("finetune", "full"))
    base = KIND_DEFAULTS[kind]
    what = KIND_PHRASES[kind]
    data, chosen, notes = dict(data), {}, []
    steps = data.get("max_steps", 300)
    for key in ("learning_rate", "weight_decay"):
        if data.get(key) is None:
            data[key] = base[key]
            chosen[key] = f"the default for {what}"
    if data.get("min_lr") is None:
        lr = data["learning_rate"]
        if isinstance(lr, int | float) and not isinstance(lr, bool):
            data["min_lr"] = float(f"{lr / 10:.12g}")  # 2e-05, not 2.0000000000000003e-06
        chosen["min_lr"] = "a tenth of learning_rate"
    if data.get("warmup_steps") is None:
        # An unset warmup shrinks with short runs, so `--max-steps 20` works out of the box.
        warm = int(base["warmup_steps"])
        data["warmup_steps"] = min(warm, steps // 10) if _is_int(steps) and steps > 0 else warm
        chosen["warmup_steps"] = f"the default for {what}, at most a tenth of max_steps"
    elif _is_int(data["warmup_steps"]) and _is_int(steps) and 0 < steps <= data["warmup_steps"]:
        # `--max-steps N` runs exactly N steps, even when the file's warmup is longer.
        notes.append(
            f"warmup_steps ({data['warmup_steps']}) is not below max_steps ({steps}): the "
            f"warmup is capped at {steps - 1} step(s) for this run."
        )
        data["warmup_steps"] = steps - 1
    return data, chosen, notes


def run_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a run folder's name, or None if it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty folder name"
    if len(name) > MAX_RUN_NAME_LENGTH or len(name.encode("utf-8")) > 2 * MAX_RUN_NAME_LENGTH:
        return f"is {len(name):,} characters long (at most {MAX_RUN_NAME_LENGTH})"
    if not name[0].isalnum() or not all(c.isalnum() or c in "._-" for c in name):
        return (
            "must be a plain folder name: letters, digits, '.', '_' and '-', starting with a "
            "letter or digit (never a path)"
        )
    return None
