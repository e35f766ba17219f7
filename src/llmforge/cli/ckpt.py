"""``llmforge ckpt``: list, inspect, register and export training checkpoints.

A CKPT argument is a checkpoint directory, a run name (its latest checkpoint), ``RUN/step-N``
(or ``RUN/N``) or ``RUN/latest``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmforge.cli import _render as r
from llmforge.cli import ckpt_export
from llmforge.cli._context import workspace
from llmforge.cli.eval import record_lines
from llmforge.fsutil import human_bytes, human_count

app = typer.Typer(help="Inspect, register and export training checkpoints.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AllowMismatchOpt = Annotated[
    bool,
    typer.Option(
        "--allow-base-mismatch",
        help="Use a LoRA checkpoint even though its base model's files changed (experts only).",
    ),
]
MergeOpt = Annotated[
    bool,
    typer.Option(
        "--merge", help="LoRA checkpoints: fold the adapter into the base and write full weights."
    ),
]
CkptArg = Annotated[
    str,
    typer.Argument(
        help="A checkpoint: its directory, RUN (the run's latest), RUN/step-N or RUN/latest.",
        show_default=False,
    ),
]


def _loss(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


@app.command("list")
def list_ckpts(
    ctx: typer.Context,
    run: Annotated[str | None, typer.Argument(help="Only this run's checkpoints.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List checkpoints: run, step, losses, model, fine_tuned_from, created, size."""
    from llmforge.checkpoints.listing import list_all
    from llmforge.evaluation.eval_records import checkpoint_subject, latest, read_records

    rows = list_all(workspace(ctx), run)
    evals = {s.path: latest(read_records(checkpoint_subject(s.path))[0]) for s in rows}
    if as_json:
        r.print_json(
            [
                {
                    "path": str(s.path),
                    "run": s.run,
                    "step": s.step,
                    "train_loss": s.meta.get("train_loss"),
                    "val_loss": s.meta.get("val_loss"),
                    "model_name": s.meta.get("model_name"),
                    "architecture": s.meta.get("architecture"),
                    "fine_tuned_from": s.meta.get("fine_tuned_from"),
                    "finetune": s.meta.get("finetune", "full"),
                    "lineage": s.meta.get("lineage"),
                    "created": s.created.isoformat(),
                    "size": s.size,
                    "evals": evals[s.path],
                }
                for s in rows
            ]
        )
        return
    if not rows:
        r.stdout().print(
            "No checkpoints yet. Train with `llmforge train CONFIG`; checkpoints are written "
            "to runs/RUN/checkpoints/.",
            markup=False,
        )
        return
    table_rows = [
        (
            s.run,
            str(s.step),
            _loss(s.meta.get("train_loss")),
            _loss(s.meta.get("val_loss")),
            (s.meta.get("model_name") or f"({s.meta.get('architecture', '?')}, scratch)")
            + (" + LoRA" if s.meta.get("finetune") == "lora" else ""),
            s.meta.get("fine_tuned_from") or "-",
            s.created.strftime("%Y-%m-%d %H:%M"),
            human_bytes(s.size),
            str(len(evals[s.path]) or "-"),
        )
        for s in rows
    ]
    cols = (
        r.Column("run", wrap=True),
        r.Column("step"),
        r.Column("train loss"),
        r.Column("val loss", drop=1),
        r.Column("model", wrap=True),
        # A checkpoint's parent is its model (or, for a branch, the model it branched from).
        r.Column("fine_tuned_from", short="parent", drop=4, wrap=True),
        r.Column("created", drop=3, wrap=True),
        r.Column("size", drop=2),
        r.Column("evals", drop=5),  # current llmforge eval records: ckpt info shows them
    )
    r.stdout().print(r.table(f"{len(rows)} checkpoint(s)", cols, table_rows))


def _lora_fields(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The LoRA lines of ``ckpt info`` (none for a full fine-tune)."""
    if meta.get("finetune") != "lora":
        return []
    lora, base = meta.get("lora") or {}, meta.get("base") or {}
    return [
        ("finetune", "lora (the checkpoint holds only the adapter)"),
        ("base", f"{base.get('model_name')} ({base.get('model_id') or '-'})"),
        ("base manifest sha256", str(base.get("manifest_sha256"))),
        ("lora rank / alpha", f"r={lora.get('r')}, alpha={lora.get('alpha', 0):g}"),
        ("lora dropout", str(lora.get("dropout"))),
        ("target modules", ", ".join(lora.get("target_modules") or [])),
        ("adapter parameters", human_count(lora.get("parameters"))),
    ]


@app.command("info")
def info(ctx: typer.Context, ckpt: CkptArg, as_json: JsonOpt = False) -> None:
    """Show a checkpoint's metadata, config and lineage tree."""
    from llmforge.checkpoints.listing import checkpoint_info
    from llmforge.evaluation.eval_records import checkpoint_subject, latest, read_records
    from llmforge.store import lineage

    ci = checkpoint_info(workspace(ctx), ckpt)
    s, meta = ci.summary, ci.summary.meta
    evals = latest(read_records(checkpoint_subject(s.path))[0])
    if as_json:
        r.print_json(
            {
                "path": str(s.path),
                "run": s.run,
                "step": s.step,
                "size": s.size,
                "created": s.created.isoformat(),
                "meta": meta,
                "state": ci.state,
                "registered_as": ci.registered_as,
                "files": ci.files,
                "integrity": ci.integrity,
                "evals": evals,
            }
        )
        return
    out = r.stdout()
    tok = meta.get("tokenizer") or {}
    fields = [
        ("path", str(s.path)),
        ("run / step", f"{s.run} / {s.step}"),
        ("train_loss", _loss(meta.get("train_loss"))),
        ("val_loss", _loss(meta.get("val_loss"))),
        ("best_val_loss", _loss(ci.state.get("best_val_loss"))),
        ("model_name", meta.get("model_name") or "- (trained from scratch)"),
        ("model_id", meta.get("model_id") or "-"),
        ("model_source", str(meta.get("model_source") or "-")),
        ("architecture", str(meta.get("architecture"))),
        ("parameters", human_count((meta.get("model") or {}).get("parameters"))),
        ("fine_tuned_from", meta.get("fine_tuned_from") or "-"),
        ("fine_tune_started_at", str(meta.get("fine_tune_started_at") or "-")),
        ("tokenizer", f"{tok.get('identifier')} ({tok.get('kind')})"),
        ("data", str((meta.get("data") or {}).get("source", "-"))),
        *_hub_data_fields(meta),
        ("registered_as", ", ".join(ci.registered_as) or "-"),
        ("created", str(s.created)),
        ("size", human_bytes(s.size)),
        ("integrity", ci.integrity),
    ]
    fields[1:1] = _lora_fields(meta)
    if meta.get("branched_from"):
        b = meta["branched_from"]
        fields.append(
            ("branched_from", f"{b.get('run')} step {b.get('step')} ({b.get('checkpoint')})")
        )
    out.print(r.key_values(f"Checkpoint {s.run}/step-{s.step}", fields))
    out.print()
    if evals:
        out.print(r.key_values("Evaluations (llmforge eval)", record_lines(evals)))
        out.print()
    out.print("[bold]Lineage[/bold]")
    names, origin = lineage.split(meta.get("lineage") or [])
    label = f"run {s.run}, step {s.step} (this checkpoint)"
    out.print(
        r.lineage_tree(
            label, names, ci.registered_as, lineage.origin_label(origin), child_note="registered"
        )
    )
    out.print()
    cfg = meta.get("config") or {}
    out.print(r.key_values("Config", [(k, str(v)) for k, v in cfg.items()]))


@app.command("register")
def register(
    ctx: typer.Context,
    ckpt: CkptArg,
    name: Annotated[str, typer.Option("--name", help="The new model's name in the registry.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing model of that name.")
    ] = False,
    merge: MergeOpt = False,
    allow_base_mismatch: AllowMismatchOpt = False,
) -> None:
    """Register a checkpoint as a model (source fine-tune), usable as model_name in configs.

    A LoRA checkpoint becomes an adapter entry that references its base, or with --merge a
    full model with the adapter folded into the base weights.
    """
    from llmforge.checkpoints.register import register_checkpoint

    notes: list[str] = []
    entry = register_checkpoint(
        workspace(ctx),
        ckpt,
        name,
        force=force,
        merge=merge,
        allow_base_mismatch=allow_base_mismatch,
        warnings=notes,
    )
    for note in notes:
        r.print_warning(note)
    parent = entry.fine_tuned_from or "nothing (trained from scratch)"
    if entry.details.get("adapter") == "lora":
        d = entry.details
        r.print_text(
            f"Registered {entry.model_name!r}: a LoRA adapter (r={d['r']}, "
            f"{human_count(entry.num_parameters)} parameters, targets "
            f"{', '.join(d['target_modules'])}) of the base {d['base']!r}, whose identity "
            f"(manifest sha256 {str(d['base_manifest_sha256'])[:16]}…) is checked on every "
            f"load. `llmforge generate {entry.model_name}` loads base + adapter; register with "
            "--merge for a model you can fine-tune further."
        )
        return
    r.print_text(
        f"Registered {entry.model_name!r} ({entry.architecture}, "
        f"{human_count(entry.num_parameters)} parameters, {len(entry.files)} files in "
        f"models/{entry.local_path}, weights linked to the checkpoint where possible), "
        f"fine-tuned from {parent}. Use it with `model_name: {entry.model_name}` in a config; "
        f"`llmforge models info {entry.model_name}` shows its lineage."
    )


app.command("export")(ckpt_export.export)


@app.command("consolidate")
def consolidate(ctx: typer.Context, ckpt: CkptArg) -> None:
    """Rewrite a sharded (strategy: fsdp) checkpoint in the usual one-file layout, in place.

    register, export and generate read sharded checkpoints directly; consolidating makes one
    self-contained (model.safetensors + optimizer.pt) that resumes with strategy: ddp.
    """
    from llmforge.checkpoints.references import resolve_checkpoint
    from llmforge.training.fsdp_checkpoint import consolidate as consolidate_checkpoint

    ws = workspace(ctx)
    path = consolidate_checkpoint(resolve_checkpoint(ws, ckpt))
    r.print_text(
        f"Consolidated {path}: one model file and optimizer.pt instead of the shards; it "
        "resumes with strategy: ddp on any number of processes."
    )


def _hub_data_fields(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The hub datasets a checkpoint was trained on (``data.hub`` of its meta.json)."""
    from llmforge.data.hub_data import hub_entries, lineage_text

    names = {"train": "dataset", "val": "validation dataset"}
    return [(names[k], lineage_text(v)) for k, v in hub_entries(meta).items()]
