"""``llmforge ckpt``: inspect, register and export checkpoints."""

from __future__ import annotations

import typer

from llmforge.errors import NotAvailableError

app = typer.Typer(
    help="Inspect, register and export training checkpoints.", invoke_without_command=True
)


@app.callback()
def ckpt() -> None:
    """Inspect, register and export checkpoints (not available in this build yet)."""
    raise NotAvailableError(
        "The checkpoint commands are not available in this build of llmforge yet.",
        "Update llmforge; `llmforge --help` lists what this build can do.",
    )
