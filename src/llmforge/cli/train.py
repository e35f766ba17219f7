"""``llmforge train``: train a model from a YAML config with command-line overrides."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmforge.cli import _render as r
from llmforge.cli._context import workspace
from llmforge.cli._progress import Reporter, plain_or_live_reporter
from llmforge.errors import EXIT_INTERRUPTED
from llmforge.fsutil import human_bytes, human_count
from llmforge.training.launch import NPROC_ENV, in_job, job_rank

if TYPE_CHECKING:
    from llmforge.training.run_setup import PreparedRun
    from llmforge.training.run_summary import RunSummary
    from llmforge.training.trainer import TrainResult

ConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="YAML config (e.g. configs/custom-transformer.yaml). Default: built-in defaults."
    ),
]
MaxStepsOpt = Annotated[
    int | None, typer.Option("--max-steps", help="Total optimizer steps of the run.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key: --set learning_rate=3e-4 (repeatable)."),
]
RunNameOpt = Annotated[
    str | None,
    typer.Option("--run-name", help="Run folder under runs/ (default: the config's name)."),
]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume", help="Continue a run: 'latest' (this config's run) or a checkpoint / run."
    ),
]
InitFromOpt = Annotated[
    str | None,
    typer.Option(
        "--init-from",
        help="Start a new lineage branch from this checkpoint's weights (RUN, RUN/step-N or "
        "a path): fresh optimizer, step 0. Needs --name.",
    ),
]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="With --init-from: the branch's new model name; the checkpoint is registered "
        "under it and the run (default run name: NAME) fine-tunes it.",
    ),
]
AllowMismatchOpt = Annotated[
    bool,
    typer.Option(
        "--allow-base-mismatch",
        help="Resume a LoRA run even though its base model's files changed (experts only).",
    ),
]
AllowDataChangeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-data-change",
        help="Resume even though the hub dataset's revision moved since the run started.",
    ),
]
StopAtOpt = Annotated[
    int | None,
    typer.Option(
        "--stop-at",
        help="Pause at this step with a checkpoint (the schedule still targets max_steps).",
    ),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the memory estimate and tokens per step, then exit without training "
        "or writing anything.",
    ),
]
NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Train on N processes on this machine (starts torchrun's launcher; one per "
        "GPU, or CPU processes sharing the cores). The config's strategy (ddp or fsdp) "
        "applies. See docs/distributed.md.",
    ),
]


def train(
    ctx: typer.Context,
    config: ConfigArg = None,
    max_steps: MaxStepsOpt = None,
    set_: SetOpt = None,
    run_name: RunNameOpt = None,
    resume: ResumeOpt = None,
    init_from: InitFromOpt = None,
    name: NameOpt = None,
    allow_base_mismatch: AllowMismatchOpt = False,
    stop_at: StopAtOpt = None,
    dry_run: DryRunOpt = False,
    nproc: NprocOpt = 1,
    allow_data_change: AllowDataChangeOpt = False,
) -> None:
    """Train a model: the from-scratch Transformer, or a registry model (model_name)."""
    from llmforge.config import load_config
    from llmforge.training.run_setup import prepare_run

    args = _TrainArgs(
        config, max_steps, set_ or [], run_name, resume, init_from, name, allow_base_mismatch
    )
    args.stop_at, args.nproc, args.allow_data_change = stop_at, nproc, allow_data_change
    cfg = load_config(config, args.overrides())
    ws = workspace(ctx)
    if nproc > 1 and not in_job() and not dry_run:
        _launch(ws, cfg, args)
        return
    if job_rank() != 0:  # rank 0 tells the story; the others stay quiet unless they fail
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # for the life of the process
    reporter = plain_or_live_reporter()
    run = prepare_run(
        ws,
        cfg,
        resume=resume,
        explicit_keys=set(cfg.model_fields_set),
        callbacks=[reporter],
        init_from=init_from,
        branch_name=name,
        allow_base_mismatch=allow_base_mismatch,
        dry_run=dry_run,
        processes=nproc if dry_run else None,
        stop_at=stop_at,
        allow_data_change=allow_data_change,
    )
    ctx.call_on_close(run.close)  # release the run's lock, leave the process group
    if dry_run:
        _print_dry_run(run)
    elif run.finished:
        _print_nothing_to_train(run)
    else:
        _print_start(run)
        result, interrupted = _fit(run, reporter, stop_at)
        _print_end(run, result, interrupted, args)


@dataclass
class _TrainArgs:
    """The command line of one ``llmforge train``, as given (for ``--nproc`` and hints)."""

    config: Path | None
    max_steps: int | None
    set_: list[str]
    run_name: str | None
    resume: str | None
    init_from: str | None
    name: str | None
    allow_base_mismatch: bool = False
    stop_at: int | None = None
    nproc: int = 1
    allow_data_change: bool = False

    def overrides(self) -> dict[str, Any]:
        """The config keys the command line sets (``--set``, ``--max-steps``, the run name)."""
        from llmforge.config import parse_overrides

        out = parse_overrides(self.set_)
        if self.max_steps is not None:
            out["max_steps"] = self.max_steps
        if self.run_name is not None:
            out["run_name"] = self.run_name
        elif self.name is not None and self.init_from is not None:
            from llmforge.store.registry import check_model_name

            # a branch gets its own run folder by default
            out["run_name"] = check_model_name(self.name)
        return out

    def rank_argv(self) -> list[str]:
        """The arguments each process of a ``--nproc`` job runs with (without ``--nproc``)."""
        argv = ["train", *([str(self.config)] if self.config else [])]
        for flag, value in (
            ("--max-steps", self.max_steps),
            ("--run-name", self.run_name),
            ("--resume", self.resume),
            ("--init-from", self.init_from),
            ("--name", self.name),
            ("--stop-at", self.stop_at),
        ):
            if value is not None:
                argv += [flag, str(value)]
        for item in self.set_:
            argv += ["--set", item]
        if self.allow_base_mismatch:
            argv.append("--allow-base-mismatch")
        if self.allow_data_change:
            argv.append("--allow-data-change")
        return argv

    def resume_hint(self, nproc: int) -> str:
        """The command that continues this run (with the --max-steps it was given: without it
        the config's own max_steps would end the run early)."""
        again = f"llmforge train {self.config or ''} --resume latest".replace("  ", " ")
        if self.max_steps is not None:
            again += f" --max-steps {self.max_steps}"
        if self.run_name or (self.name and self.init_from):
            again += f" --run-name {self.run_name or self.name}"
        if nproc > 1:
            again += f" --nproc {nproc}"
        return again


def _launch(ws: Any, cfg: Any, args: _TrainArgs) -> None:
    """Start the ``--nproc`` job and end with its exit code."""
    from llmforge.training.launch import launch_run

    code = launch_run(ws, cfg, args.rank_argv(), args.nproc, args.resume_hint(args.nproc))
    if code:
        raise typer.Exit(code)


def _fit(run: PreparedRun, reporter: Reporter, stop_at: int | None) -> tuple[TrainResult, bool]:
    """Train with the progress display; the first Ctrl-C stops after the step with a
    checkpoint, a second one aborts. Returns the result and whether Ctrl-C stopped it."""
    stop_requested = False
    first_sigint = 0.0

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal stop_requested, first_sigint
        # Under torchrun the same Ctrl-C arrives twice: from the terminal and forwarded by
        # the launcher. Only a second press (a moment later) aborts.
        if stop_requested and time.monotonic() - first_sigint > 1.0:
            raise KeyboardInterrupt
        if stop_requested:
            return
        stop_requested, first_sigint = True, time.monotonic()
        if job_rank() == 0:
            r.print_warning(
                "Ctrl-C: stopping after this step and saving a checkpoint "
                "(press Ctrl-C again to abort without saving)."
            )

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with reporter.live(run.start_step, run.trainer.cfg.max_steps):
            result = run.trainer.fit(should_stop=lambda: stop_requested, stop_at=stop_at)
    finally:
        signal.signal(signal.SIGINT, previous)
    return result, stop_requested


def _print_nothing_to_train(run: PreparedRun) -> None:
    r.stdout().print(
        f"The run {run.run_dir.name!r} is at step {run.start_step} and max_steps is "
        f"{run.trainer.cfg.max_steps}: nothing to train (nothing was written). Raise "
        "--max-steps to train further.",
        markup=False,
    )


def _print_dry_run(run: PreparedRun) -> None:
    from llmforge.training.memory import available_memory

    out = r.stdout()
    for w in run.warnings:
        r.print_warning(w)
    for line in run.notes:
        r.print_text(line, out)
    cfg, adapter = run.trainer.cfg, run.trainer.adapter
    r.print_text(
        f"Dry run: {adapter.architecture}, {human_count(adapter.num_parameters())} parameters, "
        f"precision {cfg.precision} (bf16 weights: {cfg.bf16_params}), fused loss "
        f"{cfg.fused_loss}, gradient checkpointing {cfg.gradient_checkpointing}."
    )
    for line in run.memory.lines() if run.memory is not None else []:
        r.print_text(line, out)
    r.print_text(f"Available memory: {human_bytes(available_memory(cfg))}.")
    r.print_text("Nothing was written (--dry-run).")


def _print_start(run: PreparedRun) -> None:
    out = r.stdout()
    for w in run.warnings:
        r.print_warning(w)
    assert run.summary is not None  # a run about to train has one
    for line in _start_lines(run.summary):
        r.print_text(line, out)
    for line in run.notes:
        r.print_text(line, out)
    for line in run.memory.lines() if run.memory is not None else []:
        r.print_text(line, out)


def _print_end(run: PreparedRun, result: TrainResult, interrupted: bool, args: _TrainArgs) -> None:
    where = result.last_checkpoint
    if result.stopped_early:
        world = run.dist.world_size
        launched = int(os.environ.get(NPROC_ENV, "1"))  # --nproc N started this process
        again = args.resume_hint(launched)
        if world > 1 and NPROC_ENV not in os.environ:
            torchrun = f"torchrun --nproc-per-node {world} -m llmforge train"
            again = again.replace("llmforge train", torchrun)
        stopped_by = "Interrupted" if interrupted else "Stopped"
        r.print_text(
            f"{stopped_by} at step {result.step} of {run.trainer.cfg.max_steps}; checkpoint saved "
            f"at {where}. Resume with: {again}"
        )
        if interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
        return
    finite = [loss for _, loss in result.losses if loss is not None]
    first, last = (finite[0], finite[-1]) if finite else (float("nan"), float("nan"))
    skipped = run.trainer.state.get("skipped_steps", 0)
    if skipped:
        r.print_warning(f"{skipped} step(s) were skipped because their loss was NaN or inf.")
    val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    r.print_text(
        f"Done: {result.step} steps; training loss {first:.4f} -> {last:.4f}"
        f"{val}. Checkpoint: {where}"
    )
    assert run.summary is not None
    how = '--chat -m "..."' if run.summary.chat else '--prompt "..."'
    r.print_text(f"Try it: llmforge generate {run.summary.run_name} {how}")


def _start_lines(s: RunSummary) -> list[str]:
    """The start-up log: what is trained, from where, on what."""
    return [_opening(s), *_model_lines(s), *_data_lines(s)]


def _opening(s: RunSummary) -> str:
    run = s.run_name
    if s.resumed:
        what = f"fine-tune run {run!r}" if s.model_name else f"run {run!r}"
        return f"Continuing {what} from step {s.start_step} ({s.run_dir})."
    if s.branched_from:
        b = s.branched_from
        parent = f"a fine-tune of {b['model_name']!r}" if b.get("model_name") else "from scratch"
        return (
            f"Starting new fine-tune branch {s.model_name!r} from checkpoint "
            f"{b['checkpoint']} (run {b['run']!r}, step {b['step']}, {parent}) as run {run!r} "
            f"({s.run_dir}); registered the branch point as model {s.model_name!r}."
        )
    if s.model_name:
        return f"Starting new fine-tune of {s.model_name!r} as run {run!r} ({s.run_dir})."
    return f"Starting new run {run!r}: trained from scratch ({s.run_dir})."


def _model_lines(s: RunSummary) -> list[str]:
    from llmforge.store.lineage import chain_text

    arch = ", ".join(
        f"{k}={v}" for k, v in s.model.items() if k not in ("architecture", "parameters")
    )
    trainable = ""
    if s.trainable_parameters != s.parameters:
        trainable = f", {human_count(s.trainable_parameters)} trainable"
    lines = [
        f"Model: architecture {s.architecture} ({arch}), {human_count(s.parameters)} parameters"
        f"{trainable}."
    ]
    if s.lora:
        lora, base = s.lora, s.base or {}
        lines.append(
            f"LoRA: r={lora['r']}, alpha={lora['alpha']:g}, dropout={lora['dropout']:g} on "
            f"{', '.join(lora['target_modules'])}; only the adapter "
            f"({human_count(lora.get('parameters'))} parameters) is trained and saved; base "
            f"{base.get('model_name')!r} (manifest sha256 "
            f"{str(base.get('manifest_sha256'))[:16]}…) stays frozen."
        )
    if not s.model_name:
        return [*lines, "Lineage: trained from scratch (no parent model)."]
    lines.append(
        f"Model name: {s.model_name}, model_id: {s.model_id or '-'}, "
        f"source: {s.model_source}, disk: {human_bytes(s.disk_bytes)}."
    )
    chain = chain_text(f"run {s.run_name}", s.lineage)
    lines.append(
        f"Lineage: {chain}; fine_tuned_from: {s.fine_tuned_from} "
        f"(fine-tune started {s.fine_tune_started_at})."
    )
    return lines


def _data_lines(s: RunSummary) -> list[str]:
    lines = [f"Tokenizer: {s.tokenizer.get('identifier')} ({s.tokenizer.get('kind')})."]
    examples = s.data.get("examples")
    what = (
        f"{s.data.get('format')}, {examples['train']} training / {examples['val']} validation "
        f"examples, up to {s.tokens_per_step:,} tokens per step "
        + ("(packed several to a row: packing)" if s.data.get("packing") else "(padded)")
        if examples
        else f"{s.tokens_per_step:,} tokens per step"
    )
    lines.append(
        f"Data: {s.data['source']} ({what}), {s.max_steps} steps, precision {s.precision}."
    )
    world = s.world_size
    if world > 1 or s.strategy == "fsdp":
        lines.append(
            f"Processes: {world} ({s.strategy}, {s.device}); global batch "
            f"{s.batch_size} x {s.grad_accum_steps} accumulation x {world} "
            f"processes = {s.batch_size * s.grad_accum_steps * world} sequences "
            "per step, each process on its own micro-batches; rank 0 logs and writes."
        )
    elif s.device != "cpu":
        lines.append(f"Device: {s.device}.")
    if s.chat:
        stops = ", ".join(s.chat.get("stop_tokens", []))
        lines.append(f"Chat template: {s.chat.get('source')}; a reply ends at {stops}.")
    return lines
