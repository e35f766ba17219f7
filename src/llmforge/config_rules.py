"""The rules that shape a :class:`~llmforge.config.TrainingConfig` beyond each key's type.

- Optimisation defaults by what is trained: a from-scratch model wants a large learning rate
  and weight decay, a pretrained model a gentle one (2e-3 would wreck it), LoRA adapters
  something between; the shipped configs' values.
- ``--max-steps N`` runs N steps: a warmup that does not fit is capped, with a note.
- Run names are plain, short folder names.
- Text echoed into a message is cut short and made safe for a terminal; a config file and
  ``--set`` values are read through the one bounded YAML loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmforge.errors import ConfigError
from llmforge.untrusted import UntrustedYAMLError, brief, load_yaml, terminal_text

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


def short_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters and made safe for a terminal (no quotes added)."""
    cut = text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
    return terminal_text(cut, keep_newlines=False)


def config_error(e: ValidationError, source: str, known: list[str]) -> ConfigError:
    """One message for the first problem pydantic found, naming the file and the key."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return ConfigError(
            f"{source}: unknown key {brief(key, 80)}.",
            f"Remove it or fix its spelling. Known keys: {', '.join(known)}.",
        )
    # The input can be anything a YAML file holds (a list of 100,000 aliases): echo it briefly.
    got = (
        f" (got {brief(err['input'])})"
        if "input" in err and not isinstance(err["input"], dict)
        else ""
    )
    msg = short_text(err["msg"].removeprefix("Value error, "), 400)
    where = f"key {brief(key, 80)}: " if key else ""
    more = f" ({e.error_count() - 1} more problem(s) after this one)" if e.error_count() > 1 else ""
    return ConfigError(
        f"{source}: {where}{msg}{got}{more}.",
        "Fix the value in the file or in the --set override; `llmforge train --help` and "
        "configs/custom-transformer.yaml show every key with its meaning.",
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` strings; values are read as YAML scalars (``3``, ``null``...).

    Raises:
        ConfigError: If a pair has no ``=`` or an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set {brief(pair)} is not of the form key=value.",
                "Write it like --set learning_rate=3e-4.",
            )
        try:
            out[key] = load_yaml(raw) if raw.strip() else None
        except UntrustedYAMLError as e:
            raise ConfigError(
                f"--set {brief(key, 60)}=... is refused: {e}.",
                "Give the value without YAML aliases.",
            ) from e
        except yaml.YAMLError:
            out[key] = raw
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file is an empty mapping).

    Raises:
        ConfigError: If the file is missing, unreadable, not YAML, or not a mapping.
    """
    shown = short_text(str(path), 200)
    try:
        if path.is_dir():
            raise ConfigError(
                f"The config path {shown} is a directory, not a YAML file.",
                "Give the config file itself (e.g. configs/custom-transformer.yaml).",
            )
        if not path.is_file():
            raise ConfigError(
                f"Config file {shown} does not exist.",
                "Check the path; the examples live in configs/ (e.g. "
                "configs/custom-transformer.yaml).",
            )
        if path.stat().st_size > 4 << 20:
            raise ConfigError(
                f"Config file {shown} is larger than 4 MiB; a training config is a short list "
                "of keys.",
                "Check that the path names the config, not a data file.",
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"Config file {shown} is not UTF-8 text.", "Save it as UTF-8 YAML."
        ) from e
    except OSError as e:  # unreadable, or a name too long for the filesystem
        raise ConfigError(
            f"Config file {shown} cannot be read ({e.strerror or type(e).__name__}).",
            "Check the path and its permissions.",
        ) from e
    try:
        data = load_yaml(text)
    except UntrustedYAMLError as e:
        raise ConfigError(
            f"Config file {shown} is refused: {e}.",
            "A training config is a short list of keys; write the values out without aliases.",
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"Config file {shown} is not valid YAML{where}: {short_text(str(problem), 200)}.",
            "Fix the syntax (indentation, a missing ':' or an unclosed quote are common).",
        ) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {shown} must hold a mapping of keys to values, not "
            f"{type(data).__name__}.",
            "Write it like `max_steps: 300` one key per line.",
        )
    return data
