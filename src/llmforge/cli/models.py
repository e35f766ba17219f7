"""``llmforge models``: list, inspect, validate and delete registered models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from llmforge.cli import _render as r
from llmforge.cli import models_import
from llmforge.cli._context import workspace
from llmforge.errors import EXIT_INTEGRITY, ConfirmationRequiredError
from llmforge.fsutil import human_bytes, human_count
from llmforge.untrusted import terminal_text
from llmforge.workspace import Workspace

if TYPE_CHECKING:
    from llmforge.checkpoints.manifest import ManifestCheck
    from llmforge.store.model_files import ValidationReport

app = typer.Typer(help="Manage the model registry (models/registry.json).", no_args_is_help=True)

app.command("import")(models_import.import_model)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("list")
def list_models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List registered models."""
    from llmforge.store.registry import ModelRegistry

    entries = ModelRegistry(workspace(ctx)).list()
    if as_json:
        r.print_json([e.model_dump(mode="json") for e in entries])
        return
    if not entries:
        r.stdout().print(
            "No models registered yet. Import one with `llmforge models import HUB_ID`, or "
            "train the built-in model with `llmforge train configs/custom-transformer.yaml`.",
            markup=False,
        )
        return
    rows = [
        (
            e.model_name,
            e.architecture,
            human_count(e.num_parameters),
            human_bytes(e.disk_bytes),
            e.source,
            e.fine_tuned_from or "-",
            e.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for e in entries
    ]
    cols = (
        r.Column("name"),
        r.Column("architecture", short="arch", wrap=True),
        r.Column("parameters", short="params", drop=1),
        r.Column("disk", drop=2),
        r.Column("source", drop=3),
        r.Column("fine_tuned_from", short="parent", wrap=True),
        r.Column("created", drop=4, wrap=True),
    )
    r.stdout().print(r.table(f"{len(entries)} model(s)", cols, rows))


@app.command("info")
def info(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model's name in the registry.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a model's metadata, files and lineage (parents and children)."""
    from llmforge.store import lineage
    from llmforge.store.registry import ModelRegistry

    registry = ModelRegistry(workspace(ctx))
    entry = registry.get(name)
    ancestors = registry.lineage(name)
    children = [c.model_name for c in registry.children(name)]
    from llmforge.evaluation.eval_records import latest, model_subject, read_records

    subject = model_subject(registry.workspace.models_dir, name, entry.files)
    evals = latest(read_records(subject)[0])
    if as_json:
        data = entry.model_dump(mode="json")
        data["evals"] = evals
        data["lineage"] = ancestors
        data["children"] = children
        data["origin"] = lineage.split(lineage.registry_lineage(registry, name))[1]
        r.print_json(data)
        return
    out = r.stdout()
    fields = [
        ("model_name", entry.model_name),
        ("model_id", entry.model_id or "-"),
        ("revision", entry.revision or "-"),
        ("source", entry.source),
        ("architecture", entry.architecture),
        ("parameters", f"{human_count(entry.num_parameters)} ({entry.num_parameters or '-'})"),
        ("disk", human_bytes(entry.disk_bytes)),
        ("local_path", f"models/{entry.local_path}"),
        ("tokenizer", entry.tokenizer or "-"),
        ("license", entry.license or "-"),
        ("license_accepted_at", str(entry.license_accepted_at or "-")),
        ("fine_tuned_from", entry.fine_tuned_from or "-"),
        ("created_at", str(entry.created_at)),
    ]
    d = entry.details
    if d.get("adapter") == "lora":
        fields.insert(
            1,
            (
                "LoRA adapter",
                f"r={d.get('r')}, alpha={d.get('alpha')}, targets "
                f"{', '.join(d.get('target_modules') or [])}; loads onto base {d.get('base')!r} "
                f"(manifest sha256 {str(d.get('base_manifest_sha256'))[:16]}…, checked)",
            ),
        )
    fields += [(k, str(v)) for k, v in d.items() if k != "data_hub"]  # data_train/_val say it
    out.print(r.key_values(f"Model {entry.model_name}", fields))
    out.print()
    if evals:
        from llmforge.cli.eval import record_lines

        out.print(r.key_values("Evaluations (llmforge eval)", record_lines(evals)))
        out.print()
    out.print("[bold]Lineage[/bold]")
    names, origin = lineage.split(lineage.registry_lineage(registry, name))
    out.print(r.lineage_tree(name, names[1:], children, lineage.origin_label(origin)))
    out.print()
    files = [(n, human_bytes(f.size), f.sha256[:16] + "…") for n, f in sorted(entry.files.items())]
    cols = (r.Column("file", wrap=True), r.Column("size"), r.Column("sha256"))
    out.print(r.table(f"{len(files)} file(s)", cols, files))


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Delete even if LoRA adapters or checkpoints load onto this model (they then "
            "can no longer load); implies --yes.",
        ),
    ] = False,
) -> None:
    """Delete a model: its registry entry and its files."""
    from llmforge.checkpoints.model_users import delete_model, model_users

    ws = workspace(ctx)
    users = model_users(ws, name)
    if users.broken and not force and (yes or not sys.stdin.isatty()):
        raise users.in_use_error()
    for note in users.notes():
        r.print_warning(note)
    if users.broken and not force:
        r.print_warning(users.in_use_error().message)
        typer.confirm(f"Delete {name!r} anyway?", abort=True)
        force = True
    elif not (yes or force):
        if not sys.stdin.isatty():
            raise ConfirmationRequiredError(
                f"Deleting {name!r} needs confirmation and there is no terminal to ask on.",
                "Pass --yes to delete without asking.",
            )
        typer.confirm(f"Delete model {name!r} and its files in models/{name}?", abort=True)
    result = delete_model(ws, name, force=force)
    r.stdout().print(
        terminal_text(
            f"Deleted {name!r}: freed {human_bytes(result.bytes_freed)}." + result.users.kept_note()
        ),
        markup=False,
    )
    if result.users.broken:
        r.print_warning(
            "These can no longer load, generate or resume until a model with the same files is "
            f"registered as {name!r} again: {'; '.join(result.users.broken)}."
        )


@app.command("validate")
def validate(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="One model; all models and all checkpoints in runs/ when omitted."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every file of a model (or all models and checkpoints) against its recorded size
    and sha256."""
    from llmforge.checkpoints.listing import validate_checkpoints
    from llmforge.store.model_files import validate_models

    ws = workspace(ctx)
    reports = validate_models(ws, name)
    ckpts = validate_checkpoints(ws) if name is None else []
    bad = [rep for rep in reports if not rep.ok]
    bad_ckpts = [c for c in ckpts if not c.ok]
    if as_json:
        items = [
            {
                "model_name": x.model_name,
                "ok": x.ok,
                "files_checked": x.files_checked,
                "problems": x.problems,
            }
            for x in reports
        ]
        items += [
            {
                "checkpoint": _rel(ws, c.path),
                "ok": c.ok,
                "verified": c.has_manifest,
                "files_checked": c.files_checked,
                "problems": c.problems,
            }
            for c in ckpts
        ]
        r.print_json(items)
    else:
        _print_validation(ws, reports, ckpts)
    if bad or bad_ckpts:
        names = " ".join([x.model_name for x in bad] + [_rel(ws, c.path) for c in bad_ckpts])
        counts = []
        if bad:
            counts.append(f"{len(bad)} of {len(reports)} model(s)")
        if bad_ckpts:
            counts.append(f"{len(bad_ckpts)} of {len(ckpts)} checkpoint(s)")
        hints = []
        if bad:
            hints.append(
                "Re-import each model (`llmforge models import SOURCE --name NAME --force`), or "
                "delete it with `llmforge models delete NAME`."
            )
        if bad_ckpts:
            hints.append(
                "A damaged checkpoint cannot be repaired: use another checkpoint of its run "
                "(`llmforge ckpt list`), or delete it."
            )
        r.print_error(f"{' and '.join(counts)} failed validation: {names}.", " ".join(hints))
        raise typer.Exit(EXIT_INTEGRITY)


def _rel(ws: Workspace, path: Path) -> str:
    return path.relative_to(ws.root).as_posix() if path.is_relative_to(ws.root) else str(path)


def _print_validation(
    ws: Workspace, reports: list[ValidationReport], ckpts: list[ManifestCheck]
) -> None:
    out = r.stdout()
    if not reports and not ckpts:
        out.print("No models registered; nothing to validate.", markup=False)
    for rep in reports:
        if rep.ok:
            line = f"   {rep.model_name} ({rep.files_checked} files)"
            out.print(Text.assemble(("OK", "green"), r.cell(line)))
        else:
            out.print(Text.assemble(("FAIL", "red"), r.cell(f" {rep.model_name}")))
            for p in rep.problems:
                out.print(r.cell(f"       - {p}"))  # file names come from the registry
    for c in ckpts:
        where = _rel(ws, c.path)
        if not c.has_manifest:
            out.print(Text.assemble(("--", "yellow"), r.cell(f"   {where} ({c.status})")))
        elif c.ok:
            line = f"   {where} ({c.files_checked} files)"
            out.print(Text.assemble(("OK", "green"), r.cell(line)))
        else:
            out.print(Text.assemble(("FAIL", "red"), r.cell(f" {where}")))
            for p in c.problems:
                out.print(r.cell(f"       - {p}"))
