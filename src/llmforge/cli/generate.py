"""``llmforge generate``: sample text from a model or checkpoint."""

from __future__ import annotations

from llmforge.errors import NotAvailableError


def generate() -> None:
    """Generate text from a model or checkpoint (not available in this build yet)."""
    raise NotAvailableError(
        "Generation is not available in this build of llmforge yet.",
        "Update llmforge; `llmforge --help` lists what this build can do.",
    )
