"""Training progress on the terminal: a Rich live bar, or plain log lines when piped."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmforge.cli import _render as r


def _fmt_step(m: dict[str, Any], total: int) -> str:
    return (
        f"step {m['step']}/{total}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  "
        f"grad {m['grad_norm']:.2f}  {m['tokens_per_s']:,.0f} tok/s  {m['elapsed']:.0f}s"
    )


class Reporter:
    """Shows what the trainer reports: a live bar on a terminal, else plain lines.

    It implements the methods of ``llmforge.tracking.callback.Callback`` without importing
    it, so the CLI module never imports torch.
    """

    def __init__(self, live_bar: bool) -> None:
        self.live_bar = live_bar
        self.total = 0
        self.progress: Progress | None = None
        self.task: Any = None

    @contextlib.contextmanager
    def live(self, start: int, total: int) -> Iterator[None]:
        """Show progress from step ``start`` to ``total`` while the block runs."""
        self.total = total
        if not self.live_bar:
            yield
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=r.stdout(),
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, status="")
        with self.progress:
            yield
        self.progress = None

    def _line(self, text: str) -> None:
        # Samples are model output and paths come from configs: printed as text, made printable.
        r.print_text(text, self.progress.console if self.progress is not None else None)

    def on_step(self, metrics: dict[str, Any]) -> None:
        if self.progress is not None:
            status = (
                f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
                f"{metrics['tokens_per_s']:,.0f} tok/s"
            )
            self.progress.update(self.task, completed=metrics["step"], status=status)
        else:
            self._line(_fmt_step(metrics, self.total))

    def on_eval(self, metrics: dict[str, Any]) -> None:
        self._line(
            f"step {metrics['step']}: validation loss {metrics['val_loss']:.4f} "
            f"(perplexity {metrics['val_ppl']:.2f})"
        )

    def on_sample(self, step: int, text: str) -> None:
        self._line(f"step {step} sample:\n" + "\n".join("  | " + ln for ln in text.splitlines()))

    def on_checkpoint(self, step: int, path: Path) -> None:
        self._line(f"step {step}: checkpoint saved to {path}")


def plain_or_live_reporter() -> Reporter:
    """A live bar when stdout is a terminal, plain lines otherwise (logs, CI, pipes)."""
    return Reporter(live_bar=sys.stdout.isatty())
