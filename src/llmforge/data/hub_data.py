"""A run's hub datasets: read from its config, described in its lineage, checked on resume.

:func:`read_hub_config` is what :func:`llmforge.data.batches.load_data` calls when
``data_path`` or ``val_data_path`` is ``hf://datasets/...``; the lineage it returns becomes
``data.hub`` in every checkpoint's ``meta.json`` (dataset, revision, commit sha, config,
split, columns, rows, fingerprint), which :func:`lineage_text` describes and
:func:`check_hub_revisions` compares with the hub when a run is resumed.
"""

from __future__ import annotations

from typing import Any

from llmforge.config import TrainingConfig
from llmforge.data.data_files import DataFile, read_data_file
from llmforge.data.hub_datasets import hub_token, resolve_commit
from llmforge.data.hub_records import HubSplit, read_hub_data
from llmforge.data.hub_uri import HubDatasetRef, is_hub_uri, parse_hub_uri
from llmforge.errors import DataError
from llmforge.untrusted import brief

HUB_KEYS = ("data_split", "val_split", "data_config", "data_columns")


def alpaca_layout(
    tokenizer: Any, chat_template: str | None, recorded: dict[str, Any] | None
) -> str:
    """How Alpaca rows become records: ``chat`` (one user turn, trained with the chat
    template) when the config sets ``chat_template`` or the model's tokenizer has one, else
    ``prompt`` (the Stanford layout); ``recorded`` (a resumed run's ``data.hub``) wins."""
    for entry in ((recorded or {}).get("train"), (recorded or {}).get("val")):
        if isinstance(entry, dict) and entry.get("alpaca_layout") in ("prompt", "chat"):
            return entry["alpaca_layout"]
    hf = getattr(tokenizer, "hf", None)
    return "chat" if chat_template or getattr(hf, "chat_template", None) else "prompt"


def read_hub_config(
    cfg: TrainingConfig, layout: str = "prompt"
) -> tuple[DataFile, DataFile | None, dict[str, Any]]:
    """The training and validation data of a config whose ``data_path`` or ``val_data_path``
    is a hub dataset, and the ``data.hub`` lineage of ``meta.json``.

    ``data_split`` (and ``val_split``, a split of the same dataset) are read from
    ``data_path``; a hub ``val_data_path`` of another dataset gives its ``val_split``
    (default ``train``). ``data_config`` and ``data_columns`` apply to both; ``layout`` is
    the Alpaca layout (:func:`alpaca_layout`).

    Raises:
        InvalidSourceError, DataError, BadRecordError, HubError: As :func:`read_hub_data`.
    """
    common = {"config": cfg.data_config, "data_columns": cfg.data_columns}
    common["skip_bad_lines"] = cfg.skip_bad_lines
    common["alpaca_layout"] = layout
    train_uri, val_uri = cfg.data_path, cfg.val_data_path
    lineage: dict[str, Any] = {"train": None, "val": None}
    val: HubSplit | DataFile | None = None
    if is_hub_uri(train_uri):
        same = val_uri is None or val_uri == train_uri
        read = read_hub_data(train_uri, cfg.data_split, cfg.val_split if same else None, **common)
        train, val = read.train.data, read.val
        lineage["train"] = read.train.lineage
    else:
        train = read_data_file(train_uri, cfg.data_format, cfg.skip_bad_lines)
        same = False
    if val_uri is not None and not same:
        if is_hub_uri(val_uri):
            val = read_hub_data(val_uri, cfg.val_split or "train", **common).train
        else:
            fmt = train.format if train.format != "text" else cfg.data_format
            val = read_data_file(val_uri, fmt, cfg.skip_bad_lines)
    if isinstance(val, HubSplit):
        lineage["val"] = val.lineage
        val = val.data
    return train, val, lineage


def unused_hub_keys(cfg: TrainingConfig) -> None:
    """Refuse ``data_split`` & co. set for local data, where they would silently do nothing.

    Raises:
        DataError: If one of :data:`HUB_KEYS` is set and no data path is a hub dataset.
    """
    # not model_fields_set: a resumed run's config sets every key (to its saved value)
    defaults = {k: TrainingConfig.model_fields[k].default for k in HUB_KEYS}
    used = [k for k in HUB_KEYS if getattr(cfg, k) != defaults[k]]
    if used and not (is_hub_uri(cfg.data_path) or is_hub_uri(cfg.val_data_path)):
        raise DataError(
            f"{', '.join(used)} applies to hub datasets only, but data_path is "
            f"{brief(cfg.data_path or 'the built-in corpus', 120)}.",
            "Set data_path: hf://datasets/ORG/NAME to train on a hub dataset, or remove "
            f"{used[0]} from the config.",
        )


def hub_entries(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``data.hub`` entries (``train``, ``val``) of a checkpoint's meta, well-formed only."""
    data = meta.get("data")
    hub = data.get("hub") if isinstance(data, dict) else None
    if not isinstance(hub, dict):
        return {}
    return {k: v for k, v in hub.items() if k in ("train", "val") and isinstance(v, dict)}


def dataset_ids(meta: dict[str, Any]) -> list[str]:
    """The hub datasets a checkpoint was trained (and validated) on, e.g. ``["org/alpaca"]``."""
    ids = [str(e.get("dataset")) for e in hub_entries(meta).values() if e.get("dataset")]
    return list(dict.fromkeys(ids))


def lineage_text(entry: dict[str, Any]) -> str:
    """One line about a ``data.hub`` entry, for ``ckpt info``, ``models info`` and cards."""
    rev = f" ({entry['revision']})" if entry.get("revision") else ""
    columns = ", ".join(
        c if f == c else f"{f}<-{c}" for f, c in (entry.get("columns") or {}).items()
    )
    return (
        f"{entry.get('dataset')}@{str(entry.get('sha'))[:12]}{rev}, config {entry.get('config')}"
        f", split {entry.get('split')}, {entry.get('rows')} rows, {entry.get('format')} "
        f"(columns {columns}), {str(entry.get('fingerprint'))[:19]}…"
    )


def check_hub_revisions(hub: dict[str, Any] | None, allow_change: bool) -> list[str]:
    """Refuse to resume on a hub dataset whose revision moved since the run started.

    Args:
        hub: The ``data.hub`` entry of the checkpoint's ``meta.json`` (None: no hub data).
        allow_change: Resume on the new commit anyway; the refusal becomes a warning.

    Returns:
        Warnings (a moved revision, when allowed).

    Raises:
        DataError: If a revision now names another commit (offline: the last one seen).
        HubError: If the hub cannot say (unreachable, the dataset gone).
    """
    warnings = []
    for role, entry in (hub or {}).items():
        if not entry:
            continue
        named = HubDatasetRef(str(entry.get("dataset")), entry.get("revision"), entry.get("path"))
        ref = parse_hub_uri(named.uri())  # meta.json is a file: checked as a config would be
        old = str(entry.get("sha"))
        now = old if ref.revision == old else resolve_commit(ref, hub_token())
        if now == old:
            continue
        what = (
            f"The {'validation' if role == 'val' else 'training'} dataset {ref.repo_id!r} moved "
            f"since the run started: {ref.revision or 'main'!r} was commit {old[:12]} and is "
            f"now {now[:12]}"
        )
        if not allow_change:
            raise DataError(
                f"{what}; resuming on other rows would not continue the same run. Nothing "
                "was written.",
                "Pass --allow-data-change to resume on the new commit anyway, or start a new "
                f"run with data_path: {ref.uri(old)} to train on the old rows again.",
            )
        warnings.append(f"{what}; resuming on the new commit (--allow-data-change).")
    return warnings
