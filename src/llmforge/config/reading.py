"""Reading a training config: the YAML file and ``--set`` values, both through the one bounded
YAML loader, and the one-paragraph message for a key pydantic refused.

Text echoed into a message is cut short and made safe for a terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmforge.errors import ConfigError
from llmforge.untrusted import UntrustedYAMLError, brief, load_yaml, terminal_text


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
