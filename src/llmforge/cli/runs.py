"""``llmforge runs``: list, show, plot, compare and delete training runs.

Nothing here imports torch: the commands read the run folders (``llmforge.tracking``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from llmforge.cli import _render as r
from llmforge.cli._context import workspace

app = typer.Typer(
    help="Look at training runs: list, show, plot, compare, delete.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RunArg = Annotated[str, typer.Argument(help="A run: its folder name under runs/.")]


def _loss(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.3g}"  # a diverged loss stays narrow


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    h, rest = divmod(s, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _status(s: Any) -> str:
    st = s.status
    return st.status + (f" ({st.reason})" if st.reason else "")


def _steps(s: Any) -> str:
    return f"{s.steps_done}/{s.max_steps if s.max_steps is not None else '?'}"


@app.command("list")
def list_runs(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the workspace's runs, most recently active first: model, parent, steps, losses,
    tokens, training time and status (running, finished, stopped, failed)."""
    from llmforge.fsutil import human_count
    from llmforge.inspecting.overview import list_runs as all_runs

    runs = all_runs(workspace(ctx))
    if as_json:
        r.print_json([s.to_json() | {"checkpoints": len(s.checkpoints)} for s in runs])
        return
    if not runs:
        r.print_text("No runs yet. Train with `llmforge train CONFIG`; runs live in runs/RUN/.")
        return
    rows = [
        (
            s.name,
            s.model if "scratch" not in s.model else "scratch",  # `runs show` names the arch
            s.parent or "-",
            _steps(s),
            _loss(s.train_loss),
            _loss(s.val_loss),
            human_count(s.tokens_seen),
            _duration(s.train_time_s),
            _status(s),
        )
        for s in runs
    ]
    cols = (
        r.Column("run", wrap=True),
        r.Column("model", wrap=True),
        r.Column("parent", drop=5, wrap=True),
        r.Column("steps"),
        r.Column("loss"),
        r.Column("val loss", short="val", drop=1),
        r.Column("tokens", drop=3),
        r.Column("time", drop=2),
        r.Column("status", wrap=True),
    )
    r.stdout().print(r.table(f"{len(runs)} run(s)", cols, rows))


def _summary_fields(ws: Any, s: Any) -> list[tuple[str, str]]:
    from llmforge.fsutil import human_count
    from llmforge.store.lineage import chain_text

    st = s.status
    fields = [
        ("status", _status(s) + (f": {st.detail}" if st.detail else "")),
        ("folder", str(s.run_dir)),
        ("model", s.model),
        ("lineage", chain_text(f"run {s.name}", s.lineage)),
        ("steps", f"{_steps(s)} (last logged: {s.last_logged_step or '-'})"),
        ("train loss", _loss(s.train_loss)),
        ("validation loss", f"{_loss(s.val_loss)} (best {_loss(s.best_val_loss)})"),
        ("tokens seen", human_count(s.tokens_seen)),
        ("training time", _duration(s.train_time_s)),
        ("started", str(s.started_at or "-")),
        ("segments", str(len(s.segments) or "-")),
        ("report_to", ", ".join(s.report_to) or "none"),
    ]
    if s.branched_from:
        b = s.branched_from
        fields.insert(4, ("branched from", f"{b.get('run')} step {b.get('step')}"))
    if st.inferred:
        fields[0] = (fields[0][0], fields[0][1] + " (inferred: the run has no status.json)")
    return fields


@app.command("show")
def show(
    ctx: typer.Context,
    run: RunArg,
    as_json: JsonOpt = False,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Draw the loss curves.")] = True,
) -> None:
    """Show one run: summary, checkpoints, evaluations and a plot of its losses."""
    from llmforge.fsutil import human_bytes
    from llmforge.inspecting import overview as summary
    from llmforge.tracking import plots, series

    ws = workspace(ctx)
    run_dir = summary.find_run(ws, run)
    s = summary.summarize(run_dir, detail=True, registry=summary.registry_entries(ws))
    evals = summary.evaluations(run_dir)
    curves = series.curves(series.read_records(run_dir))
    if as_json:
        data = s.to_json()
        data["evaluations"] = evals
        data["series"] = {k: {"steps": c.steps, "values": c.values} for k, c in curves.items()}
        r.print_json(data)
        return
    out = r.stdout()
    out.print(r.key_values(f"Run {s.name}", _summary_fields(ws, s)))
    out.print()
    ck_rows = [
        (
            str(c.step),
            _loss(c.train_loss),
            _loss(c.val_loss),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(c.created)),
            human_bytes(c.size),
            ", ".join(c.registered_as) or "-",
        )
        for c in s.checkpoints
    ]
    cols = (
        "step",
        "train loss",
        "val loss",
        "created",
        "size",
        r.Column("registered as", wrap=True),
    )
    out.print(r.table(f"{len(ck_rows)} checkpoint(s)", cols, ck_rows))
    _print_evaluations(evals)
    if plot:
        width = min(out.width, 80)
        text = plots.terminal_plot(curves, width=width, color=sys.stdout.isatty())
        if text:
            out.print()
            sys.stdout.write(text + "\n")  # already laid out; Rich must not re-wrap it


def _print_evaluations(evals: list[dict[str, Any]], last: int = 10) -> None:
    out = r.stdout()
    if not evals:
        out.print("\nNo evaluations yet (validation runs every eval_interval steps).", markup=False)
        return
    shown = evals[-last:]
    keys = sorted({k for e in shown for k in e if k not in ("kind", "step")})
    rows = [(str(e["step"]), str(e.get("kind")), *(_loss(e.get(k)) for k in keys)) for e in shown]
    title = f"Evaluations (last {len(shown)} of {len(evals)})"
    out.print()
    out.print(r.table(title, ["step", "kind", *keys], rows))


@app.command("plot")
def plot(
    ctx: typer.Context,
    runs: Annotated[list[str], typer.Argument(help="One or more runs to draw together.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The image to write: .png, .svg or .pdf.")
    ],
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="What to draw (repeatable): loss, val_loss, val_ppl, lr, grad_norm, "
            "tokens_per_s. Default: loss.",
        ),
    ] = None,
    x: Annotated[str, typer.Option("--x", help="The x axis: step, tokens or time.")] = "step",
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic y axis.")] = False,
    size: Annotated[str, typer.Option("--size", help="Pixels, WIDTHxHEIGHT.")] = "1000x600",
) -> None:
    """Draw the curves of one or more runs into an image (several runs overlaid)."""
    from llmforge.inspecting import overview as summary
    from llmforge.tracking import plots, series

    ws = workspace(ctx)
    dims = plots.parse_size(size)
    drawn = []
    for name in runs:
        run_dir = summary.find_run(ws, name)
        s = summary.summarize(run_dir)
        curves = series.curves(series.read_records(run_dir))
        drawn.append(plots.PlotRun(name, curves, s.tokens_per_step))
    notes = plots.figure(drawn, metric or ["loss"], output, x=x, log_y=log_y, size=dims)
    for note in notes:
        r.print_warning(note)
    r.print_text(f"Wrote {output} ({dims[0]}x{dims[1]} px, {len(runs)} run(s)).")


@app.command("compare")
def compare(
    ctx: typer.Context,
    runs: Annotated[list[str], typer.Argument(help="Two or more runs.")],
    as_json: JsonOpt = False,
) -> None:
    """Compare runs side by side: the config keys that differ, and their final metrics."""
    from llmforge.fsutil import human_count
    from llmforge.inspecting import overview as summary

    if len(runs) < 2:
        raise typer.BadParameter("give at least two runs to compare", param_hint="RUNS")
    ws = workspace(ctx)
    sums = [summary.summarize(summary.find_run(ws, n)) for n in runs]
    diff = summary.config_diff([s.config for s in sums])
    finals = [
        ("status", [_status(s) for s in sums]),
        ("model", [s.model for s in sums]),
        ("steps", [_steps(s) for s in sums]),
        ("train loss", [_loss(s.train_loss) for s in sums]),
        ("val loss", [_loss(s.val_loss) for s in sums]),
        ("best val loss", [_loss(s.best_val_loss) for s in sums]),
        ("tokens seen", [human_count(s.tokens_seen) for s in sums]),
        ("training time", [_duration(s.train_time_s) for s in sums]),
    ]
    if as_json:
        r.print_json(
            {
                "runs": runs,
                "config_differences": {k: v for k, v in diff},
                "final": [s.to_json() for s in sums],
            }
        )
        return
    out = r.stdout()
    cols = ["", *(r.Column(n, wrap=True) for n in runs)]
    out.print(r.table("Final metrics", cols, [(k, *v) for k, v in finals]))
    out.print()
    if not diff:
        out.print("Their configs are the same.", markup=False)
        return
    rows = [(k, *(str(x) for x in v)) for k, v in diff]
    out.print(r.table(f"{len(diff)} config difference(s)", ["key", *cols[1:]], rows))


@app.command("delete")
def delete(
    ctx: typer.Context,
    run: RunArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Delete even if registry models were made from its checkpoints (they keep "
            "their weights); implies --yes. A running run is never deleted.",
        ),
    ] = False,
) -> None:
    """Delete a run folder (checkpoints, metrics, tracker files) and report the space freed."""
    from llmforge.errors import ConfirmationRequiredError
    from llmforge.fsutil import human_bytes
    from llmforge.inspecting import overview as summary
    from llmforge.inspecting import removal as deleting

    ws = workspace(ctx)
    run_dir = summary.find_run(ws, run)
    if not (yes or force):
        if not sys.stdin.isatty():
            raise ConfirmationRequiredError(
                f"Deleting the run {run!r} needs confirmation and there is no terminal to ask on.",
                "Pass --yes to delete without asking.",
            )
        typer.confirm(f"Delete the run {run!r} and everything in {run_dir}?", abort=True)
    res = deleting.delete_run(ws, run, force=force)
    kept = (
        f"; {human_bytes(res.bytes_kept)} stay on disk, shared by hard link with registered "
        f"models ({', '.join(res.dependents) or 'elsewhere'})"
        if res.bytes_kept
        else ""
    )
    r.print_text(
        f"Deleted the run {run!r} ({res.files} files): freed {human_bytes(res.bytes_freed)}{kept}."
    )
