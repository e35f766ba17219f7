"""``llmforge train``: train a model from a YAML config."""

from __future__ import annotations

import typer

from llmforge.errors import NotAvailableError

app = typer.Typer(help="Train a model from a YAML config.", invoke_without_command=True)


@app.callback()
def train() -> None:
    """Train a model from a YAML config (not available in this build yet)."""
    raise NotAvailableError(
        "Training is not available in this build of llmforge yet.",
        "Update llmforge; `llmforge --help` lists what this build can do.",
    )
