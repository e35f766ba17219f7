"""``llmforge eval``: held-out loss and harness tasks of several targets, side by side."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmforge.cli import _render as r
from llmforge.cli._context import workspace

HELDOUT_COLUMNS = (
    ("loss", "loss"),
    ("perplexity", "ppl"),
    ("bits_per_byte", "bits/byte"),
)


TargetsArg = Annotated[
    list[str],
    typer.Argument(
        help="Registry model names or checkpoints (RUN, RUN/step-N, a path); the first is "
        "the one the others are compared with.",
        show_default=False,
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Held-out data file, any format training reads (text, JSONL text, "
        "prompt-completion, chat; .txt/.jsonl/.json/.csv/.parquet), or a hub dataset "
        "hf://datasets/ORG/NAME[@REVISION].",
    ),
]
DataSplitOpt = Annotated[
    str | None, typer.Option("--data-split", help="Split of a hub dataset (default: test).")
]
DataConfigOpt = Annotated[
    str | None, typer.Option("--data-config", help="Config of a hub dataset (default: its own).")
]
DataFormatOpt = Annotated[
    str, typer.Option("--data-format", help="auto, text, jsonl-text, prompt-completion, chat.")
]
TasksOpt = Annotated[
    str | None,
    typer.Option(
        "--tasks",
        help="lm-evaluation-harness tasks, comma-separated (llmforge-smoke ships offline; "
        "needs pip install 'llmforge[eval]').",
    ),
]
IncludePathOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--include-path",
        help="A folder of your own task YAML files. lm-eval RUNS the Python code they "
        "name (!function): only pass folders you trust.",
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", help="Use the first N documents / task items.")
]
FewshotOpt = Annotated[
    int | None, typer.Option("--num-fewshot", help="Few-shot examples per task item.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the harness.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Windows per forward.")]
ContextOpt = Annotated[
    int | None, typer.Option("--context", help="Tokens per window (default: the model's).")
]
StrideOpt = Annotated[
    int | None, typer.Option("--stride", help="New tokens scored per window after the first.")
]
PromptOpt = Annotated[
    bool | None,
    typer.Option(
        "--train-on-prompt/--answers-only",
        help="Chat and prompt-completion data: score the prompts too, or only the answers "
        "(default: as the first target was trained).",
        show_default=False,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
NoRecordOpt = Annotated[bool, typer.Option("--no-record", help="Do not write eval records.")]
MismatchOpt = Annotated[
    bool, typer.Option("--allow-base-mismatch", help="Use a LoRA adapter whose base changed.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print a JSON list of rows, and nothing else.")
]


def eval_command(
    ctx: typer.Context,
    targets: TargetsArg,
    data: DataOpt = None,
    data_format: DataFormatOpt = "auto",
    data_split: DataSplitOpt = None,
    data_config: DataConfigOpt = None,
    tasks: TasksOpt = None,
    include_path: IncludePathOpt = None,
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    seed: SeedOpt = 1234,
    batch_size: BatchOpt = 8,
    context: ContextOpt = None,
    stride: StrideOpt = None,
    train_on_prompt: PromptOpt = None,
    device: DeviceOpt = "auto",
    no_record: NoRecordOpt = False,
    allow_base_mismatch: MismatchOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Held-out loss and harness tasks of models and checkpoints, side by side."""
    from llmforge.evaluation.run_eval import EvalRequest, run_eval

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, not {device!r}.")
    names = tuple(t.strip() for t in (tasks or "").split(",") if t.strip())
    req = EvalRequest(
        targets=tuple(targets),
        data=data,
        data_format=data_format,
        data_split=data_split,
        data_config=data_config,
        tasks=names,
        include_path=tuple(include_path or ()),
        limit=limit,
        num_fewshot=num_fewshot,
        seed=seed,
        batch_size=batch_size,
        context=context,
        stride=stride,
        train_on_prompt=train_on_prompt,
        device=device,
        record=not no_record,
        allow_base_mismatch=allow_base_mismatch,
    )
    report = run_eval(workspace(ctx), req)
    for note in report.warnings:
        r.print_warning(note)  # stderr: stdout stays pure JSON with --json
    if as_json:
        r.print_json([res.row() for res in report.results])
        return
    _print_report(report)


def _diff(value: float | None, first: float | None) -> str:
    if value is None or first is None:
        return "-"
    return f"{value - first:+.4f}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_report(report: Any) -> None:
    """A table per measurement: a row per target, the difference to the first beside each."""
    rows = [res.row() for res in report.results]
    out = r.stdout()
    if "loss" in rows[0]:
        metrics = [(k, t, 2 if k == "perplexity" else 0) for k, t in HELDOUT_COLUMNS]
        title = f"Held-out loss, {rows[0]['tokens']} tokens (Δ: difference to the first target)"
        out.print(_table(title, rows, metrics))
    for task, values in (rows[0].get("tasks") or {}).items():
        metrics = [(f"{task}/{m}", m, 0) for m in ("acc", "acc_norm") if m in values]
        n = values.get("samples")
        out.print(_table(f"{task}, {n} items (Δ: difference to the first target)", rows, metrics))
    written = sum(len(res.records) for res in report.results)
    if written:
        r.print_text(f"Recorded {written} result(s); ckpt info / models info show them.", out)


def _table(title: str, rows: list[dict[str, Any]], metrics: list[tuple[str, str, int]]) -> Any:
    """Target, then each metric with its difference to the first row's (droppable ones last)."""
    columns: list[Any] = [r.Column("target")]
    for _, header, drop in metrics:
        columns += [r.Column(header, drop=drop), r.Column("Δ", drop=drop)]
    body = []
    for row in rows:
        cells = [row["target"]]
        for key, _, _ in metrics:
            value, base = _metric(row, key), _metric(rows[0], key)
            cells += [_num(value), "" if row is rows[0] else _diff(value, base)]
        body.append(cells)
    return r.table(title, columns, body)


def _metric(row: dict[str, Any], key: str) -> float | None:
    task, _, metric = key.partition("/")
    if not metric:
        return row.get(key)
    return ((row.get("tasks") or {}).get(task) or {}).get(metric)


def record_lines(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(what, result)`` pairs of eval records, for ``ckpt info`` and ``models info``."""
    out = []
    for rec in records:
        m, d, when = rec.get("metrics") or {}, rec.get("data") or {}, rec.get("created", "?")
        if rec.get("kind") == "heldout":
            src = str(d.get("path") or d.get("hub") or "?").rsplit("/", 1)[-1]
            what = f"held-out {src} ({d.get('format')})"
            res = (
                f"loss {_num(m.get('loss'))}, ppl {_num(m.get('perplexity'))}, "
                f"bits/byte {_num(m.get('bits_per_byte'))}, {m.get('tokens')} tokens; {when}"
            )
        else:
            what = f"task {d.get('task')}"
            shots = (rec.get("settings") or {}).get("num_fewshot")
            res = ", ".join(f"{k} {_num(v)}" for k, v in m.items() if k in ("acc", "acc_norm"))
            res += f" ({m.get('samples')} items, {shots}-shot); {when}"
        out.append((what, res))
    return out
