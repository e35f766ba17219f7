"""``llmforge ckpt export``: a checkpoint as a Hugging Face folder, or anything as GGUF.

``--format hf`` (the default) writes a standalone Hugging Face / PEFT folder of a checkpoint;
``--format gguf`` writes a GGUF file for llama.cpp, Ollama and LM Studio, an Ollama
``Modelfile`` and a card, from a checkpoint or a registry model (docs/export.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmforge.cli import _render as r
from llmforge.cli._context import workspace
from llmforge.errors import ConfigError
from llmforge.fsutil import human_bytes

FORMATS = ("hf", "gguf")


class _TensorProgress:
    """A Rich bar of tensor bytes on a terminal; nothing when stderr is piped."""

    def __init__(self) -> None:
        self._rich: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        if self._rich is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self._rich = Progress(
                TextColumn("writing tensors"), BarColumn(), DownloadColumn(), console=r.stderr()
            )
            self._rich.start()
            self._task = self._rich.add_task("tensors", total=total)
        self._rich.update(self._task, completed=done, total=total)

    def __enter__(self) -> _TensorProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()


def _check_options(fmt: str, dtype: str | None, adapter: bool, with_base: bool, merge: bool):
    if fmt not in FORMATS:
        raise ConfigError(
            f"--format {fmt!r} is not an export format.", "Use --format hf or --format gguf."
        )
    if fmt == "hf":
        given = [n for n, v in (("--dtype", dtype), ("--adapter", adapter)) if v]
        given += ["--with-base"] if with_base else []
        if given:
            raise ConfigError(
                f"{', '.join(given)} only apply to --format gguf.",
                "Add --format gguf, or leave them out for a Hugging Face folder.",
            )
    elif merge and adapter:
        raise ConfigError(
            "--merge and --adapter contradict each other.",
            "A GGUF export of a LoRA is merged by default; --adapter writes the adapter alone.",
        )


TargetArg = Annotated[
    str,
    typer.Argument(
        metavar="CKPT",
        help="A checkpoint: its directory, RUN (the run's latest), RUN/step-N or "
        "RUN/latest; with --format gguf also a registry model name.",
        show_default=False,
    ),
]
DestArg = Annotated[Path, typer.Argument(help="The folder to write (new or empty).")]
FormatOpt = Annotated[
    str, typer.Option("--format", help="hf: a Hugging Face folder; gguf: GGUF + Modelfile.")
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="GGUF type: f32, f16 (default), bf16, q8_0, or a llama.cpp K-quant such as "
        "q4_k_m (needs llama-cpp-python).",
        show_default=False,
    ),
]
AdapterOpt = Annotated[
    bool, typer.Option("--adapter", help="GGUF of a LoRA: a GGUF LoRA adapter, not merged.")
]
WithBaseOpt = Annotated[
    bool, typer.Option("--with-base", help="With --adapter: the base's GGUF and a Modelfile too.")
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace the contents of a non-empty folder.")
]
MergeOpt = Annotated[
    bool,
    typer.Option(
        "--merge", help="LoRA checkpoints: fold the adapter into the base (full weights)."
    ),
]
AllowMismatchOpt = Annotated[
    bool,
    typer.Option(
        "--allow-base-mismatch",
        help="Use a LoRA checkpoint even though its base model's files changed (experts only).",
    ),
]


def export(
    ctx: typer.Context,
    target: TargetArg,
    dest: DestArg,
    fmt: FormatOpt = "hf",
    dtype: DtypeOpt = None,
    adapter: AdapterOpt = False,
    with_base: WithBaseOpt = False,
    force: ForceOpt = False,
    merge: MergeOpt = False,
    allow_base_mismatch: AllowMismatchOpt = False,
) -> None:
    """Export a checkpoint as a Hugging Face folder, or a checkpoint or model as GGUF.

    --format hf (default): a standalone Hugging Face folder; a LoRA checkpoint as a PEFT
    adapter folder, or with --merge with the adapter folded into the base weights.
    --format gguf: a GGUF file llama.cpp, Ollama and LM Studio load, an Ollama Modelfile and
    a model card; a LoRA is merged unless --adapter.
    """
    _check_options(fmt, dtype, adapter, with_base, merge)
    ws = workspace(ctx)
    if fmt == "hf":
        _export_hf(ws, target, dest, force, merge, allow_base_mismatch)
        return
    with _TensorProgress() as progress:
        from llmforge.exporting.gguf_export import export_gguf

        res = export_gguf(
            ws,
            target,
            dest,
            dtype=dtype or "f16",
            adapter=adapter,
            with_base=with_base,
            force=force,
            allow_base_mismatch=allow_base_mismatch,
            progress=progress,
        )
    _report_gguf(res)


def _report_gguf(res: Any) -> None:
    for note in res.notes:
        r.print_warning(note)
    size = sum((res.dest / f).stat().st_size for f in res.files)
    r.print_text(
        f"Exported {res.source} ({res.architecture}, {res.dtype}) to {res.dest}: "
        f"{', '.join(res.files)} ({human_bytes(size)})."
    )
    r.print_text(f"Generation stops at: {', '.join(res.stop_tokens)}.")
    if res.fell_back:
        r.print_warning(
            f"{res.fell_back} tensor(s) could not take {res.dtype} (their rows are not a "
            "multiple of 256 values) and got an older llama.cpp type; tensor types: "
            + ", ".join(f"{t} x{n}" for t, n in sorted(res.tensor_types.items()))
            + "."
        )
    if res.modelfile:
        r.print_text(f"Ollama: ollama create NAME -f {res.dest / 'Modelfile'}")


def _export_hf(
    ws: Any, target: str, dest: Path, force: bool, merge: bool, allow_base_mismatch: bool
) -> None:
    from llmforge.exporting.hf_folder import export_checkpoint

    notes: list[str] = []
    res = export_checkpoint(
        ws,
        target,
        dest,
        force=force,
        merge=merge,
        allow_base_mismatch=allow_base_mismatch,
        warnings=notes,
    )
    for note in notes:
        r.print_warning(note)
    r.print_text(
        f"Exported {res.checkpoint} ({res.architecture}) to {res.dest}: {', '.join(res.files)}."
    )
    r.print_text(f"Load it with: {res.loads_with}")
