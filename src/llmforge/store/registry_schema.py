"""What ``models/registry.json`` holds: the model-name rule and the entry schema.

The one rule for model names (:func:`name_problem`) lives here, beside the pydantic schema of
an entry that enforces it; :mod:`llmforge.registry` reads and changes the file and re-exports
everything below.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmforge.errors import InvalidModelNameError
from llmforge.untrusted import brief

SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 64
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")

Source = Literal["huggingface", "local", "fine-tune", "init"]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0)


# Names of the workspace's own files beside the model folders (compared case-insensitively:
# on a case-insensitive filesystem README.md and readme.md are one file). Hidden names
# (.cache, .staging, .registry.lock) cannot match NAME_PATTERN at all.
RESERVED_NAMES = frozenset({"registry.json", "readme.md"})
RESERVED_SUFFIXES = (".lock", ".tmp", ".incomplete")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a model name, or None if it can.

    The one rule for model names, used by every command that creates or reads one (import,
    register, ``--init-from --name``, the registry file itself).
    """
    if not isinstance(name, str):
        return f"a model name is text, not {type(name).__name__}"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is {len(name):,} characters long (at most {MAX_NAME_LENGTH})"
    if not NAME_PATTERN.fullmatch(name):
        return (
            "names use lowercase letters, digits, '.', '_' and '-', and start with a letter or "
            "digit (a name is never a path)"
        )
    if name.lower() in RESERVED_NAMES or name.lower().endswith(RESERVED_SUFFIXES):
        return "it is reserved for the workspace's own files in models/"
    return None


def check_model_name(name: str) -> str:
    """Validate a model name and return it.

    A name is what the user types (``qwen-0.5b-base``); it is also a folder name under
    ``models/``, so it can never be a path, nor one of the workspace's own file names.

    Raises:
        InvalidModelNameError: If the name is empty, too long, has other characters than
            lowercase letters, digits, ``.``, ``_`` and ``-`` (first character a letter or
            digit), or is reserved (``registry.json``, ``README.md``, ``*.lock``, ...).
    """
    problem = name_problem(name)
    if problem is not None:
        raise InvalidModelNameError(
            f"{brief(name, 80)} is not a valid model name: {problem}.",
            f"Try --name {suggest_model_name(str(name))!r}.",
        )
    return name


def suggest_model_name(text: str) -> str:
    """Derive a valid model name from free text or a hub id (``Qwen/Qwen2-0.5B`` -> ``qwen2-0.5b``).

    Args:
        text: A hub id, a folder name, or any string.

    Returns:
        A name matching the registry's pattern (``model`` if nothing usable remains).
    """
    last = text.rstrip("/").split("/")[-1].lower()
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", last).strip("-._")
    cleaned = cleaned[:MAX_NAME_LENGTH].rstrip("-._") or "model"
    if name_problem(cleaned) is not None:  # reserved: registry.json -> registry.json-model
        cleaned = f"{cleaned[: MAX_NAME_LENGTH - 6]}-model"
        cleaned = cleaned if name_problem(cleaned) is None else "model"
    return cleaned


class FileRecord(BaseModel):
    """Size and checksum of one file of a model."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelEntry(BaseModel):
    """One registered model. ``model_name`` is local; ``model_id`` says where it came from."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_id: str | None = None
    revision: str | None = None
    source: Source
    architecture: str
    local_path: str
    files: dict[str, FileRecord] = Field(default_factory=dict)
    num_parameters: int | None = Field(default=None, ge=0)
    disk_bytes: int | None = Field(default=None, ge=0)
    license: str | None = None
    license_accepted_at: datetime | None = None
    fine_tuned_from: str | None = None
    created_at: datetime = Field(default_factory=utc_now)
    tokenizer: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model_name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        problem = name_problem(v)
        if problem is not None:
            raise ValueError(f"invalid model name: {problem}")
        return v

    @field_validator("fine_tuned_from")
    @classmethod
    def _valid_parent_name(cls, v: str | None) -> str | None:
        # the parent is a model name too (it is shown, looked up, and never a path)
        if v is not None and name_problem(v) is not None:
            raise ValueError(f"fine_tuned_from must be a model name: {name_problem(v)}")
        return v

    @field_validator("local_path")
    @classmethod
    def _relative_path(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or ".." in p.parts or "\\" in v:
            raise ValueError(f"local_path must be relative to models/ without '..', got {v!r}")
        return v

    @model_validator(mode="after")
    def _own_folder(self) -> ModelEntry:
        # A model's folder is models/<its name>, nothing else: a local_path naming another
        # model's folder, registry.json or .cache would make `models delete` remove that.
        if self.local_path != self.model_name:
            raise ValueError(
                f"local_path must be the model's own name {self.model_name!r} (its folder "
                f"models/{self.model_name}), got {brief(self.local_path, 80)}"
            )
        return self

    @field_validator("files")
    @classmethod
    def _relative_files(cls, v: dict[str, FileRecord]) -> dict[str, FileRecord]:
        for name in v:
            p = PurePosixPath(name)
            if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
                raise ValueError(f"file names must be relative without '..', got {name!r}")
        return v


class RegistryFile(BaseModel):
    """The whole ``registry.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int
    models: dict[str, ModelEntry] = Field(default_factory=dict)
