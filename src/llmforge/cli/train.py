"""``llmforge train``: train a model from a YAML config with command-line overrides."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from llmforge.cli import _render as r
from llmforge.cli._context import workspace
from llmforge.cli._progress import plain_or_live_reporter
from llmforge.errors import EXIT_INTERRUPTED
from llmforge.fsutil import human_bytes, human_count
from llmforge.training.launch import NPROC_ENV, in_job, job_rank


def _start_lines(info: dict[str, Any], resumed: bool, start_step: int) -> list[str]:
    """The start-up log: what is trained, from where, on what."""
    from llmforge.store.lineage import chain_text

    lines = []
    run = info["run_name"]
    if resumed:
        what = f"fine-tune run {run!r}" if info["model_name"] else f"run {run!r}"
        lines.append(f"Continuing {what} from step {start_step} ({info['run_dir']}).")
    elif info.get("branched_from"):
        b = info["branched_from"]
        parent = f"a fine-tune of {b['model_name']!r}" if b.get("model_name") else "from scratch"
        lines.append(
            f"Starting new fine-tune branch {info['model_name']!r} from checkpoint "
            f"{b['checkpoint']} (run {b['run']!r}, step {b['step']}, {parent}) as run {run!r} "
            f"({info['run_dir']}); registered the branch point as model "
            f"{info['model_name']!r}."
        )
    elif info["model_name"]:
        lines.append(
            f"Starting new fine-tune of {info['model_name']!r} as run {run!r} ({info['run_dir']})."
        )
    else:
        lines.append(f"Starting new run {run!r}: trained from scratch ({info['run_dir']}).")
    model = info["model"]
    arch = ", ".join(
        f"{k}={v}" for k, v in model.items() if k not in ("architecture", "parameters")
    )
    lines.append(
        f"Model: architecture {info['architecture']} ({arch}), "
        f"{human_count(info['parameters'])} parameters"
        + (
            ""
            if info["trainable_parameters"] == info["parameters"]
            else f", {human_count(info['trainable_parameters'])} trainable"
        )
        + "."
    )
    lora = info.get("lora")
    if lora:
        base = info.get("base") or {}
        lines.append(
            f"LoRA: r={lora['r']}, alpha={lora['alpha']:g}, dropout={lora['dropout']:g} on "
            f"{', '.join(lora['target_modules'])}; only the adapter "
            f"({human_count(lora.get('parameters'))} parameters) is trained and saved; base "
            f"{base.get('model_name')!r} (manifest sha256 "
            f"{str(base.get('manifest_sha256'))[:16]}…) stays frozen."
        )
    if info["model_name"]:
        lines.append(
            f"Model name: {info['model_name']}, model_id: {info['model_id'] or '-'}, "
            f"source: {info['model_source']}, disk: {human_bytes(info['disk_bytes'])}."
        )
        chain = chain_text(f"run {run}", info["lineage"])
        lines.append(
            f"Lineage: {chain}; fine_tuned_from: {info['fine_tuned_from']} "
            f"(fine-tune started {info['fine_tune_started_at']})."
        )
    else:
        lines.append("Lineage: trained from scratch (no parent model).")
    tok = info["tokenizer"] or {}
    lines.append(f"Tokenizer: {tok.get('identifier')} ({tok.get('kind')}).")
    data = info["data"]
    examples = data.get("examples")
    what = (
        f"{data.get('format')}, {examples['train']} training / {examples['val']} validation "
        f"examples, up to {info['tokens_per_step']:,} tokens per step (padded)"
        if examples
        else f"{info['tokens_per_step']:,} tokens per step"
    )
    lines.append(
        f"Data: {data['source']} ({what}), {info['max_steps']} steps, precision "
        f"{info['precision']}."
    )
    world = info.get("world_size", 1)
    if world > 1 or info.get("strategy") == "fsdp":
        lines.append(
            f"Processes: {world} ({info['strategy']}, {info['device']}); global batch "
            f"{info['batch_size']} x {info['grad_accum_steps']} accumulation x {world} "
            f"processes = {info['batch_size'] * info['grad_accum_steps'] * world} sequences "
            "per step, each process on its own micro-batches; rank 0 logs and writes."
        )
    elif info.get("device", "cpu") != "cpu":
        lines.append(f"Device: {info['device']}.")
    chat = info.get("chat")
    if chat:
        stops = ", ".join(chat.get("stop_tokens", []))
        lines.append(f"Chat template: {chat.get('source')}; a reply ends at {stops}.")
    return lines


def _resume_hint(
    config: Path | None,
    run_name: str | None,
    name: str | None,
    init_from: str | None,
    nproc: int,
    max_steps: int | None = None,
) -> str:
    """The command that continues this run (with the --max-steps it was given: without it the
    config's own max_steps would end the run early)."""
    again = f"llmforge train {config or ''} --resume latest".replace("  ", " ")
    if max_steps is not None:
        again += f" --max-steps {max_steps}"
    if run_name or (name and init_from):
        again += f" --run-name {run_name or name}"
    if nproc > 1:
        again += f" --nproc {nproc}"
    return again


def _launch(ws: Any, cfg: Any, argv: list[str], nproc: int, resume_command: str) -> None:
    """Start the ``--nproc`` job and end with its exit code."""
    from llmforge.checkpoints.layout import latest_checkpoint
    from llmforge.training.launch import launch_local
    from llmforge.training.run_folder import run_dir_for
    from llmforge.training.run_lock import check_free
    from llmforge.workspace import HOME_ENV

    check_free(run_dir_for(ws, cfg))  # a run in training: refused before N processes start
    code = launch_local(
        argv,
        nproc,
        env={HOME_ENV: str(ws.root)},  # the ranks use this workspace
        last_checkpoint=lambda: latest_checkpoint(run_dir_for(ws, cfg)),
        resume_command=resume_command,
    )
    if code:
        raise typer.Exit(code)


def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Argument(
            help="YAML config (e.g. configs/custom-transformer.yaml). Default: built-in defaults."
        ),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Total optimizer steps of the run.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override any config key: --set learning_rate=3e-4 (repeatable)."
        ),
    ] = None,
    run_name: Annotated[
        str | None,
        typer.Option("--run-name", help="Run folder under runs/ (default: the config's name)."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", help="Continue a run: 'latest' (this config's run) or a checkpoint / run."
        ),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            help="Start a new lineage branch from this checkpoint's weights (RUN, RUN/step-N or "
            "a path): fresh optimizer, step 0. Needs --name.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="With --init-from: the branch's new model name; the checkpoint is registered "
            "under it and the run (default run name: NAME) fine-tunes it.",
        ),
    ] = None,
    allow_base_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-base-mismatch",
            help="Resume a LoRA run even though its base model's files changed (experts only).",
        ),
    ] = False,
    stop_at: Annotated[
        int | None,
        typer.Option(
            "--stop-at",
            help="Pause at this step with a checkpoint (the schedule still targets max_steps).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the memory estimate and tokens per step, then exit without training "
            "or writing anything.",
        ),
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Train on N processes on this machine (starts torchrun's launcher; one per "
            "GPU, or CPU processes sharing the cores). The config's strategy (ddp or fsdp) "
            "applies. See docs/distributed.md.",
        ),
    ] = 1,
) -> None:
    """Train a model: the from-scratch Transformer, or a registry model (model_name)."""
    from llmforge.config import load_config, parse_overrides
    from llmforge.training.run_setup import prepare_run

    overrides = parse_overrides(set_ or [])
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if run_name is not None:
        overrides["run_name"] = run_name
    elif name is not None and init_from is not None:
        from llmforge.store.registry import check_model_name

        overrides["run_name"] = check_model_name(
            name
        )  # a branch gets its own run folder by default
    cfg = load_config(config, overrides)
    ws = workspace(ctx)
    rank = job_rank()
    if nproc > 1 and not in_job() and not dry_run:
        argv = ["train", *([str(config)] if config else [])]
        for flag, value in (
            ("--max-steps", max_steps),
            ("--run-name", run_name),
            ("--resume", resume),
            ("--init-from", init_from),
            ("--name", name),
            ("--stop-at", stop_at),
        ):
            if value is not None:
                argv += [flag, str(value)]
        for item in set_ or []:
            argv += ["--set", item]
        if allow_base_mismatch:
            argv.append("--allow-base-mismatch")
        hint = _resume_hint(config, run_name, name, init_from, nproc, max_steps)
        _launch(ws, cfg, argv, nproc, hint)
        return
    if rank != 0:  # rank 0 tells the story; the others stay quiet unless they fail
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
    )
    ctx.call_on_close(run.close)  # release the run's lock, leave the process group
    out = r.stdout()
    if run.finished and not dry_run:
        out.print(
            f"The run {run.run_dir.name!r} is at step {run.start_step} and max_steps is "
            f"{run.trainer.cfg.max_steps}: nothing to train (nothing was written). Raise "
            "--max-steps to train further.",
            markup=False,
        )
        return
    if dry_run:
        for w in run.warnings:
            r.print_warning(w)
        for line in run.notes:
            r.print_text(line, out)
        cfg_run = run.trainer.cfg
        r.print_text(
            f"Dry run: {run.trainer.adapter.architecture}, "
            f"{human_count(run.trainer.adapter.num_parameters())} parameters, precision "
            f"{cfg_run.precision} (bf16 weights: {cfg_run.bf16_params}), fused loss "
            f"{cfg_run.fused_loss}, gradient checkpointing {cfg_run.gradient_checkpointing}."
        )
        if run.memory is not None:
            for line in run.memory.lines():
                r.print_text(line, out)
        from llmforge.training.memory import available_memory

        r.print_text(f"Available memory: {human_bytes(available_memory(cfg_run))}.")
        r.print_text("Nothing was written (--dry-run).")
        return
    for w in run.warnings:
        r.print_warning(w)
    for line in _start_lines(run.info, run.resumed_from is not None, run.start_step):
        r.print_text(line, out)
    for line in run.notes:
        r.print_text(line, out)
    if run.memory is not None:
        for line in run.memory.lines():
            r.print_text(line, out)

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
        if rank == 0:
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

    where = result.last_checkpoint
    if result.stopped_early:
        world = run.dist.world_size
        launched = int(os.environ.get(NPROC_ENV, "1"))  # --nproc N started this process
        again = _resume_hint(config, run_name, name, init_from, launched, max_steps)
        if world > 1 and NPROC_ENV not in os.environ:
            torchrun = f"torchrun --nproc-per-node {world} -m llmforge train"
            again = again.replace("llmforge train", torchrun)
        stopped_by = "Interrupted" if stop_requested else "Stopped"
        r.print_text(
            f"{stopped_by} at step {result.step} of {run.trainer.cfg.max_steps}; checkpoint saved "
            f"at {where}. Resume with: {again}"
        )
        if stop_requested:
            raise typer.Exit(EXIT_INTERRUPTED)
    else:
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
        how = '--chat -m "..."' if run.info.get("chat") else '--prompt "..."'
        r.print_text(f"Try it: llmforge generate {run.info['run_name']} {how}")
