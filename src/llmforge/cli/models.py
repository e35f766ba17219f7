"""``llmforge models``: list, inspect, validate and delete registered models."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmforge.cli import _render as r
from llmforge.cli import models_import
from llmforge.cli._context import workspace
from llmforge.errors import EXIT_INTEGRITY, ConfirmationRequiredError
from llmforge.fsutil import human_bytes, human_count

app = typer.Typer(help="Manage the model registry (models/registry.json).", no_args_is_help=True)

app.command("import")(models_import.import_model)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("list")
def list_models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List registered models."""
    from llmforge.registry import ModelRegistry

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
    from llmforge.registry import ModelRegistry
    from llmforge.training import lineage

    registry = ModelRegistry(workspace(ctx))
    entry = registry.get(name)
    ancestors = registry.lineage(name)
    children = [c.model_name for c in registry.children(name)]
    if as_json:
        data = entry.model_dump(mode="json")
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
    fields += [(k, str(v)) for k, v in d.items()]
    out.print(r.key_values(f"Model {entry.model_name}", fields))
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
) -> None:
    """Delete a model: its registry entry and its files."""
    from llmforge.modelops import delete_model
    from llmforge.registry import ModelRegistry

    ws = workspace(ctx)
    registry = ModelRegistry(ws)
    entry = registry.get(name)
    children = [c.model_name for c in registry.children(name)]
    if children:
        r.print_warning(
            f"{', '.join(children)} name {name!r} as fine_tuned_from; their lineage will point "
            "at a model that no longer exists (their own weights are not affected)."
        )
    if not yes:
        if not sys.stdin.isatty():
            raise ConfirmationRequiredError(
                f"Deleting {name!r} needs confirmation and there is no terminal to ask on.",
                "Pass --yes to delete without asking.",
            )
        typer.confirm(
            f"Delete model {name!r} and its files in models/{entry.local_path}?", abort=True
        )
    result = delete_model(ws, name)
    msg = f"Deleted {name!r}: freed {human_bytes(result.bytes_freed)}."
    if result.files_kept_for:
        msg += f" Its files stay: {', '.join(result.files_kept_for)} still use(s) them."
    r.stdout().print(msg, markup=False)


@app.command("validate")
def validate(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="One model; all models when omitted.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every file of a model (or all models) against its recorded size and sha256."""
    from llmforge.modelops import validate_models

    reports = validate_models(workspace(ctx), name)
    bad = [rep for rep in reports if not rep.ok]
    if as_json:
        r.print_json(
            [
                {
                    "model_name": x.model_name,
                    "ok": x.ok,
                    "files_checked": x.files_checked,
                    "problems": x.problems,
                }
                for x in reports
            ]
        )
    else:
        out = r.stdout()
        if not reports:
            out.print("No models registered; nothing to validate.", markup=False)
        for rep in reports:
            if rep.ok:
                out.print(f"[green]OK[/green]   {rep.model_name} ({rep.files_checked} files)")
            else:
                out.print(f"[red]FAIL[/red] {rep.model_name}")
                for p in rep.problems:
                    out.print(f"       - {p}", markup=False)
    if bad:
        names = " ".join(x.model_name for x in bad)
        r.print_error(
            f"{len(bad)} of {len(reports)} model(s) failed validation: {names}.",
            "Re-import each one (`llmforge models import SOURCE --name NAME --force`), or "
            "delete it with `llmforge models delete NAME`.",
        )
        raise typer.Exit(EXIT_INTEGRITY)
