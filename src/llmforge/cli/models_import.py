"""``llmforge models import SOURCE``: bring a hub or local model into the registry."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from llmforge.cli import _render as r
from llmforge.cli._context import workspace
from llmforge.errors import LicenseNotAcceptedError
from llmforge.fsutil import human_bytes, human_count
from llmforge.untrusted import brief, terminal_text

if TYPE_CHECKING:
    from llmforge.importing.licensing import LicenseInfo
    from llmforge.importing.plan import ImportHooks, ImportPlan


def import_model(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            # No square brackets: Typer renders help as Rich markup ("[/tree/REV]" was read
            # as a closing tag and crashed --help).
            help="A hub id (Qwen/Qwen2-0.5B), a hub URL (https://huggingface.co/Qwen/Qwen2-0.5B, "
            "optionally ending in /tree/REV) or a local folder in Hugging Face format.",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="Registry name (default: derived from SOURCE)."),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Branch, tag or commit sha (default: main branch)."),
    ] = None,
    accept_license: Annotated[
        bool,
        typer.Option("--accept-license", help="Accept the model's license without a prompt."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing model with the same name.")
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="HF_TOKEN",
            help="Hub token for gated or private repositories (default: $HF_TOKEN). Never stored.",
            show_default=False,
            show_envvar=True,
        ),
    ] = None,
) -> None:
    """Import a model from the Hugging Face Hub or a local folder into the registry."""
    from huggingface_hub.utils import disable_progress_bars, logging

    from llmforge.importing.pipeline import import_model as run_import
    from llmforge.importing.plan import ImportRequest

    disable_progress_bars()  # llmforge draws its own progress, with the real file names
    logging.set_verbosity_error()  # and says itself what matters (not "Invalid model-index")
    ws = workspace(ctx)
    # Which of --token / HF_TOKEN gave the token, for messages (never its value). Compared by
    # name: Typer's click may be vendored (typer._click) or not.
    from_env = getattr(ctx.get_parameter_source("token"), "name", "") == "ENVIRONMENT"
    req = ImportRequest(
        source=source,
        name=name,
        revision=revision,
        token=token or None,
        accept_license=accept_license,
        force=force,
        token_from="HF_TOKEN" if from_env else "--token",
    )
    with _Progress() as progress:
        result = run_import(ws, req, progress.hooks())
    e = result.entry
    out = r.stdout()
    verb = "Replaced" if result.replaced else "Imported"
    where = f"{e.model_id}@{e.revision[:12]}" if e.revision else e.model_id
    out.print(
        _safe(
            f"{verb} {e.model_name!r} from {where}: {e.architecture}, "
            f"{human_count(e.num_parameters)} parameters, {human_bytes(e.disk_bytes)} in "
            f"models/{e.local_path} (license {e.license})."
        ),
        markup=False,
    )
    if result.reused_files and not result.downloaded_files:
        out.print("All files came from the local cache; nothing was downloaded.", markup=False)


def _safe(text: str, keep_newlines: bool = False) -> str:
    """Repository text (ids, file names, license) made safe to print: no escape sequences."""
    return terminal_text(text, keep_newlines=keep_newlines)


class _Progress:
    """Rich progress (files and bytes) on a terminal, one plain line per file otherwise.

    Everything shown comes from the repository (its id, file names, license text), so all
    of it goes through :func:`_safe` and is printed with ``markup=False``.
    """

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._rich = None
        self._files_task = None
        self._bytes_task = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def hooks(self) -> ImportHooks:
        from llmforge.importing.plan import ImportHooks

        return ImportHooks(
            on_plan=self.plan,
            on_warning=r.print_warning,
            confirm_license=self.confirm_license,
            on_file_start=self.file_start,
            on_bytes=self.bytes,
            on_file_done=self.file_done,
            on_step=lambda msg: r.stderr().print(_safe(msg + "…"), markup=False),
        )

    def plan(self, plan: ImportPlan) -> None:
        err = r.stderr()
        rev = f" at {plan.revision[:12]}" if plan.revision else ""
        line = (
            f"{plan.model_id}{rev}: {plan.architecture}, {len(plan.files)} files, "
            f"{human_bytes(plan.total_bytes)}"
        )
        if plan.revision is not None:
            line += f" ({human_bytes(plan.download_bytes)} to download)"
        if plan.skipped:
            line += f"; skipping {len(plan.skipped)} file(s) not needed"
        err.print(_safe(line + "."), markup=False)
        if plan.unsafe:
            shown = ", ".join(brief(n, 60) for n in plan.unsafe[:5])
            more = f" and {len(plan.unsafe) - 5} more" if len(plan.unsafe) > 5 else ""
            r.print_warning(
                f"Refusing {len(plan.unsafe)} file(s) whose names could write outside the model "
                f"folder or hide text on the terminal: {shown}{more}. They are not downloaded."
            )
        if plan.convert:
            err.print("Weights are pickled .bin files: they will be converted.", markup=False)
        self._plan = plan

    def confirm_license(self, info: LicenseInfo) -> bool:
        err = r.stderr()
        err.print(_safe(info.describe()), markup=False)
        if info.excerpt:
            err.print(_safe(info.excerpt, keep_newlines=True), markup=False, style="dim")
        if not sys.stdin.isatty():
            raise LicenseNotAcceptedError(
                f"The model's license ({_safe(info.label)}) must be accepted and there is no "
                "terminal to ask on; nothing was imported.",
                "Read the license, then re-run with --accept-license.",
            )
        return typer.confirm("Do you accept this license?", default=False, err=True)

    def _start_rich(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        plan = self._plan
        self._rich = Progress(
            TextColumn("{task.description:<28}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeRemainingColumn(),
            console=r.stderr(),
        )
        self._rich.start()
        self._files_task = self._rich.add_task("files", total=plan.progress_files, amount="")
        self._bytes_task = self._rich.add_task("bytes", total=plan.progress_bytes, amount="")
        self._done_files = self._done_bytes = 0
        self._refresh()

    def _refresh(self) -> None:
        plan = self._plan
        self._rich.update(
            self._files_task, amount=f"{self._done_files}/{plan.progress_files} files"
        )
        self._rich.update(
            self._bytes_task,
            amount=f"{human_bytes(self._done_bytes)} / {human_bytes(plan.progress_bytes)}",
        )

    def file_start(self, name: str, size: int) -> None:
        if self.tty and self._rich is None:
            self._start_rich()
        if self._rich is not None:
            self._rich.update(self._bytes_task, description=_safe(name)[:28])

    def bytes(self, n: int) -> None:
        if self._rich is not None:
            self._done_bytes += n
            self._rich.advance(self._bytes_task, n)
            self._refresh()

    def file_done(self, name: str, downloaded: bool) -> None:
        if self._rich is not None:
            self._done_files += 1
            self._rich.advance(self._files_task, 1)
            self._refresh()
        else:
            how = "downloaded" if downloaded else "from cache" if self._plan.revision else "copied"
            r.stderr().print(_safe(f"  {name} ({how})"), markup=False)
