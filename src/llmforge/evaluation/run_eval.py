"""``llmforge eval TARGET [TARGET ...]``: every check first, then each target, then the records.

Order (what keeps a refused command from writing anything): the request's numbers, every
target's name (without loading it), the ``--data`` file (training's reader), the harness tasks
and ``--include-path`` folders; only then is each target loaded and scored in turn, and the
records of all of them are written at the end, one new file each
(:mod:`llmforge.evaluation.eval_records`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import ConfigError, EvalError
from llmforge.evaluation import eval_records as rec
from llmforge.evaluation.documents import default_prefix_id, file_documents, read_eval_data
from llmforge.workspace import Workspace


@dataclass(frozen=True)
class EvalRequest:
    """What ``llmforge eval`` was asked.

    Attributes:
        targets: Checkpoint references or registry model names; the first is the reference
            the others are compared with.
        data: A held-out data file (any format training reads), or None.
        data_format: ``auto`` or a format name, as in the training config.
        data_split: The split of a hub dataset ``data`` (None: ``test``).
        data_config: The config of a hub dataset ``data`` (None: its default).
        tasks: lm-evaluation-harness task names.
        include_path: Folders of local task YAML files (their code runs).
        limit: Documents (records) of ``data`` and of each task to use; None: all.
        num_fewshot: Few-shot examples of each task (None: the task's default).
        seed: The harness's seeds.
        batch_size: Windows (or harness requests) per forward.
        context: Tokens per window (None: the model's context).
        stride: New targets per window after the first (None: ``context``).
        train_on_prompt: Score prompts too (None: as the first target that records it was
            trained, else no).
        device: ``auto``, ``cpu`` or ``cuda``.
        record: Write eval records.
        allow_base_mismatch: Load a LoRA adapter whose base model changed.
    """

    targets: tuple[str, ...]
    data: str | None = None
    data_format: str = "auto"
    data_split: str | None = None
    data_config: str | None = None
    tasks: tuple[str, ...] = ()
    include_path: tuple[str, ...] = ()
    limit: int | None = None
    num_fewshot: int | None = None
    seed: int = 1234
    batch_size: int = 8
    context: int | None = None
    stride: int | None = None
    train_on_prompt: bool | None = None
    device: str = "auto"
    record: bool = True
    allow_base_mismatch: bool = False


@dataclass
class TargetResult:
    """One row: a target's held-out loss and task metrics, and the records written."""

    target: str
    heldout: Any = None  # HeldoutResult
    tasks: list[Any] = field(default_factory=list)  # TaskResult
    records: list[Path] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The ``--json`` row: ``target``, the held-out metrics, ``tasks: {name: metrics}``."""
        out: dict[str, Any] = {"target": self.target}
        if self.heldout is not None:
            out.update(self.heldout.row())
        if self.tasks:
            out["tasks"] = {t.task: {**t.metrics, "samples": t.samples} for t in self.tasks}
        return out


@dataclass
class EvalReport:
    """The outcome of :func:`run_eval`."""

    results: list[TargetResult]
    warnings: list[str] = field(default_factory=list)


def check_request(req: EvalRequest) -> None:
    """Refuse impossible numbers and empty requests before anything is read.

    Raises:
        ConfigError: If a number is out of range or there is nothing to evaluate.
    """
    if not req.targets:
        raise ConfigError("No TARGET to evaluate.", "Name a registry model, RUN or RUN/step-N.")
    if len(set(req.targets)) != len(req.targets):
        raise ConfigError("A TARGET is named twice.", "Name each target once.")
    if req.data is None and not req.tasks:
        raise ConfigError(
            "Nothing to evaluate: give a held-out data file with --data, or harness tasks with "
            "--tasks.",
            "For example: llmforge eval MODEL --data val.jsonl, or --tasks llmforge-smoke.",
        )
    for name, value in (
        ("--limit", req.limit),
        ("--batch-size", req.batch_size),
        ("--context", req.context),
        ("--stride", req.stride),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, not {value}.", f"Pass {name} 1 or more.")
    if req.num_fewshot is not None and req.num_fewshot < 0:
        raise ConfigError(f"--num-fewshot must be 0 or more, not {req.num_fewshot}.", None)
    if req.context and req.stride and req.stride > req.context:
        raise ConfigError(
            f"--stride {req.stride} is larger than --context {req.context}.",
            "A stride of at most the context scores every token once.",
        )
    if req.include_path and not req.tasks:
        raise ConfigError("--include-path is only used with --tasks.", "Add --tasks NAME.")


def _train_on_prompt(req: EvalRequest, metas: list[dict[str, Any]]) -> bool:
    if req.train_on_prompt is not None:
        return req.train_on_prompt
    for meta in metas:
        data = meta.get("data") if isinstance(meta.get("data"), dict) else None
        if data and isinstance(data.get("train_on_prompt"), bool):
            return data["train_on_prompt"]
    return False


def _heldout(adapter: Any, meta: dict[str, Any], f: Any, req: EvalRequest, top: bool) -> Any:
    """The held-out loss of one loaded target, and the settings that decide it."""
    from llmforge.data.chat_templates import resolve_chat_format
    from llmforge.evaluation.heldout import ScoreOptions, adapter_scorer, heldout_loss

    tok = adapter.tokenizer
    hf = getattr(tok, "hf", None)
    chat = resolve_chat_format(tok, None, meta.get("chat")) if f.format == "chat" else None
    prefix = default_prefix_id(hf) if hf is not None else None
    docs = file_documents(
        f, tok, chat_format=chat, train_on_prompt=top, prefix_id=prefix, limit=req.limit
    )
    longest = adapter.max_context or 2048
    context = min(req.context or longest, longest)
    stride = min(req.stride or context, context)
    ids = (getattr(hf, "pad_token_id", None), tok.eos_token_id)
    pad = next((i for i in ids if i is not None), 0)  # never attended to, never scored
    device = next(adapter.model.parameters()).device
    opts = ScoreOptions(context, stride, req.batch_size, int(pad), device)
    result = heldout_loss(adapter_scorer(adapter), docs, opts, adapter.model)
    if not result.tokens:
        raise EvalError(
            f"No token of {f.source} is scored for this model (every record is prompt only).",
            "Give records with an assistant turn or completion, or pass --train-on-prompt.",
        )
    settings = {
        "context": context,
        "stride": stride,
        "device": device.type,
        "dtype": str(next(adapter.model.parameters()).dtype).removeprefix("torch."),
        "prefix_id": prefix,
        "train_on_prompt": top if f.format in ("chat", "prompt-completion") else None,
    }
    if chat is not None:
        settings["chat_template_sha256"] = hashlib.sha256(chat.template.encode()).hexdigest()
    return result, settings


def _data_for(read: tuple[Any, Any], adapter: Any, meta: dict[str, Any], config: Any) -> Any:
    """The held-out data as this target was (or would be) trained on it: Alpaca rows of a hub
    dataset in the chat layout for a model with a chat template (as training decides)."""
    from llmforge.data.hub_data import alpaca_layout

    data, hub = read
    if not hub or hub.get("format") != "alpaca":
        return data
    recorded = (meta.get("data") or {}).get("hub") if isinstance(meta.get("data"), dict) else None
    layout = alpaca_layout(adapter.tokenizer, None, recorded)
    if layout == hub.get("alpaca_layout"):
        return data
    # the same commit (data.source pins it): read from the prepared cache, no request
    return read_eval_data(data.source, split=hub["split"], config=config, layout=layout)[0]


def _harness_tokenizer(adapter: Any, target: str) -> Any:
    hf = getattr(adapter.tokenizer, "hf", None)
    if hf is None or not hasattr(adapter.model, "config"):
        raise EvalError(
            f"{target} is a from-scratch Transformer (character tokenizer, no transformers "
            "model), which lm-evaluation-harness cannot run.",
            "Use --data for its held-out loss, or evaluate a model imported from the hub.",
        )
    return hf


def _prepare(ws: Workspace, req: EvalRequest) -> tuple[list[rec.Subject], Any, Any]:
    """Every check that needs no model: targets, the data file, tasks and include paths."""
    check_request(req)
    subjects = []
    for target in req.targets:
        subject = rec.subject_of(ws, target)
        folder = ws.inside(subject.folder, "the eval records folder")  # no symlink out
        subjects.append(rec.Subject(subject.kind, subject.ref, folder, subject.fingerprint))
    data = None
    if req.data is not None:
        data = read_eval_data(req.data, req.data_format, req.data_split, req.data_config)
    manager = None
    if req.tasks:
        from llmforge.evaluation import harness

        harness.require_lm_eval()
        with harness.quiet_harness():
            manager = harness.task_manager(req.tasks, req.include_path)
    return subjects, data, manager


def _one_target(
    ws: Workspace,
    req: EvalRequest,
    target: str,
    subject: rec.Subject,
    prepared: tuple[Any, Any],
    warnings: list[str],
) -> tuple[TargetResult, list[dict[str, Any]]]:
    """Load one target, score it, and build (not write) its records."""
    from llmforge.inference.model_source import load_for_inference

    read, manager = prepared
    adapter, meta = load_for_inference(
        ws,
        target,
        allow_base_mismatch=req.allow_base_mismatch,
        warnings=warnings,
        device=req.device,
    )
    out, records = TargetResult(target), []
    data = _data_for(read, adapter, meta, req.data_config) if read is not None else None
    if data is not None:
        out.heldout, settings = _heldout(adapter, meta, data, req, _train_on_prompt(req, [meta]))
        settings["batch_size"] = req.batch_size
        records.append(rec.heldout_record(subject, out.heldout, data, settings, req.limit))
    if req.tasks:
        from llmforge.evaluation import harness

        opts = harness.HarnessOptions(
            req.tasks,
            req.include_path,
            limit=req.limit,
            num_fewshot=req.num_fewshot,
            seed=req.seed,
            batch_size=req.batch_size,
        )
        hf = _harness_tokenizer(adapter, target)
        out.tasks = harness.run_tasks(adapter.model, hf, opts, manager)
        settings = {"limit": req.limit, "seed": req.seed, "batch_size": req.batch_size}
        records += [rec.harness_record(subject, t, settings) for t in out.tasks]
    return out, records


def run_eval(ws: Workspace, req: EvalRequest) -> EvalReport:
    """Evaluate every target of ``req`` and record the results: the one call the CLI makes.

    Nothing is written until every target has been evaluated: a refused or failed command
    leaves the workspace as it was.

    Raises:
        ConfigError: For impossible settings.
        CheckpointError: For a target that is neither a checkpoint nor a registered model.
        DataError, BadRecordError: For a data file training would refuse.
        EvalError: For an unknown task, a refused include path, lm-eval missing or failing.
        UnsafePathError: If a records folder would land outside the workspace (a symlink).
    """
    subjects, data, manager = _prepare(ws, req)
    report = EvalReport([])
    built = []
    for target, subject in zip(req.targets, subjects, strict=True):
        result, records = _one_target(ws, req, target, subject, (data, manager), report.warnings)
        report.results.append(result)
        built.append(records)
    if req.record:
        for subject, result, records in zip(subjects, report.results, built, strict=True):
            result.records += [rec.write_record(subject, r) for r in records]
    return report
