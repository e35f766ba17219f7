"""One tracker as :class:`~llmforge.tracking.reporting.RunTracker` drives it: the
:class:`Reporter` interface, what it is told about the run (:class:`RunInfo`), and the config
as the flat hyperparameters trackers take (:func:`flat_hparams`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """What a reporter needs to know about the run it reports.

    Attributes:
        run_name: ``runs/<run_name>``.
        run_dir: The run's folder.
        workspace_root: The workspace (default home of trackers' local stores).
        start_step: Steps already done when this segment starts (0 for a new run).
        max_steps: The step the run trains to.
        hparams: The resolved config (``TrainingConfig.to_dict()``).
        model_name: The registry model it fine-tunes, or None (from scratch).
        tokens_per_step: Tokens one optimizer step consumes (all processes).
        world_size: Processes of the job.
    """

    run_name: str
    run_dir: Path
    workspace_root: Path
    start_step: int
    max_steps: int
    hparams: dict[str, Any]
    model_name: str | None = None
    tokens_per_step: int | None = None
    world_size: int = 1

    @property
    def resumed(self) -> bool:
        """Whether this segment continues the run from a checkpoint."""
        return self.start_step > 0


class Reporter:
    """One tracker. Subclasses implement :meth:`start`, :meth:`log` and :meth:`close`.

    Attributes:
        name: The ``report_to`` name.
        live: The reporter can drop steps past the resumed step when a run resumes, so it
            may see records before a checkpoint covers them (see the module docstring).
        fresh: Set by :meth:`start`: the tracker holds nothing of this run yet. A resumed run
            that adds a tracker to ``report_to`` then replays its earlier steps to it.
    """

    name = "reporter"
    live = False
    fresh = True

    def start(self, run: RunInfo, hparams: dict[str, Any]) -> None:
        """Open the tracker's run (a new one, or the run's own on resume)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``{tag: value}`` at ``step``."""

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Record a text (a generated sample) at ``step``; trackers without text ignore it."""

    def flush(self) -> None:
        """Make what was logged durable (called at every checkpoint)."""

    def close(self, outcome: str | None) -> None:
        """Finish the tracker's run; ``outcome`` is the run's status, None if unknown."""


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config as one level of ``key: scalar`` (``lora.r``), the shape trackers accept.

    None becomes ``"null"`` and a list its JSON text: TensorBoard's hparams take only numbers,
    strings and booleans.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, prefix=f"{name}."))
        elif value is None:
            out[name] = "null"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out
