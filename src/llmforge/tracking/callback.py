"""What the trainer reports, and to whom: :class:`Callback` (the CLI's progress display and
the metrics file implement it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Callback:
    """Receives what the trainer reports. Every method is optional."""

    def on_step(self, metrics: dict[str, Any]) -> None:
        """After a logged optimizer step: step, loss, lr, grad_norm, tokens_per_s, elapsed."""

    def on_eval(self, metrics: dict[str, Any]) -> None:
        """After a validation pass: step, val_loss, val_ppl."""

    def on_sample(self, step: int, text: str) -> None:
        """After a text sample was generated."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint was written."""

    def on_end(self, outcome: dict[str, Any]) -> None:
        """When ``Trainer.fit`` returns or raises: status (``finished``, ``stopped`` or
        ``failed``), step (steps completed), and for a failure reason and error."""
