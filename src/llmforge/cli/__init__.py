"""The ``llmforge`` command line: the root app, its sub-apps, and error handling.

This is the one place where library errors become messages and exit codes. Nothing here
imports torch or transformers at module level, so ``llmforge --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from llmforge import __version__
from llmforge.cli import ckpt, generate, models, runs, serve, train
from llmforge.cli._context import CliState
from llmforge.cli._render import print_error
from llmforge.cli.eval import eval_command
from llmforge.errors import EXIT_ERROR, EXIT_INTERRUPTED, DistributedError, LLMForgeError
from llmforge.training.launch import in_job, job_rank

DEBUG_ENV = "LLMFORGE_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


# Exits, aborts and usage errors are handled by Typer itself. Newer Typer vendors click
# (typer._click), older Typer uses click; either way the usage-error base class is the
# ClickException in BadParameter's ancestry, so click itself need not be imported.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_NOT_ERRORS: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, _CLICK_EXCEPTION)


class ErrorMappingGroup(TyperGroup):
    """The root group: turns llmforge's typed errors into a message and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _NOT_ERRORS:
            raise
        except LLMForgeError as e:
            if _debug():
                raise
            rank = job_rank()
            if rank == 0:
                print_error(e.message, e.hint)
            elif e.every_rank:  # only this rank knows: say which one it is
                print_error(f"[rank {rank}] {e.message}", e.hint)
            if isinstance(e, DistributedError) and in_job():
                # The job's process group lost a peer: its teardown at exit would wait for
                # the peer or abort (SIGABRT), and the launcher would then blame this rank.
                # It has said what happened; leave without tearing anything down.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(e.exit_code)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if _debug():
                raise
            print_error("Interrupted.", None)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:
            if _debug():
                raise
            rank = job_rank()
            print_error(
                f"{f'[rank {rank}] ' if rank else ''}Unexpected error: {type(e).__name__}: {e}.",
                f"This is a bug in llmforge. Re-run with {DEBUG_ENV}=1 to see the traceback "
                "and include it when you report the problem.",
            )
            raise typer.Exit(EXIT_ERROR) from None


app = typer.Typer(
    cls=ErrorMappingGroup,
    name="llmforge",
    help="Get a language model, fine-tune it on your own machine, keep track of what came "
    "from what, and get it back out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: with Rich markup every "[...]" in a help string is parsed as a tag (one
    # "[/tree/REV]" crashed `models import --help`), and Typer's Rich panels print "<bool>"
    # after every flag. Sub-commands inherit -h from the root context.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmforge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        str | None,
        typer.Option(
            "--home",
            help="Workspace directory (holds models/ and runs/). Default: $LLMFORGE_HOME, "
            "else the current directory.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """llmforge: local model registry, training, lineage and export."""
    ctx.obj = CliState(home=home)


app.add_typer(models.app, name="models")
app.command(name="train")(train.train)
app.add_typer(ckpt.app, name="ckpt")
app.command(name="generate")(generate.generate)
app.command(name="serve")(serve.serve)
app.command(name="eval")(eval_command)
app.add_typer(runs.app, name="runs")


def _openmp_waits_politely() -> None:
    """Let idle OpenMP threads sleep instead of spinning (before torch is imported).

    libgomp, the OpenMP of torch's Linux wheels, makes a thread that waits for the next parallel
    region spin 300,000 times first. On a machine whose cores other programs use too, a spinning
    thread holds the core its partner needs: the main job ran 6x slower with 2 threads than with
    1 there (benchmarks/README.md, bench_threads.py), while with passive waiting 2 threads were
    as fast as 1 under that load and never collapsed. The user's own setting wins.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main() -> None:
    """Entry point of the ``llmforge`` console script and ``python -m llmforge``."""
    _openmp_waits_politely()
    app()
