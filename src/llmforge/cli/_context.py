"""State shared by all commands: the ``--home`` option and the workspace it resolves to."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from llmforge.workspace import Workspace, resolve_workspace


@dataclass
class CliState:
    """What the root callback parsed.

    Attributes:
        home: The ``--home`` value, or None.
    """

    home: str | None = None


def workspace(ctx: typer.Context) -> Workspace:
    """The workspace for this invocation (``--home``, ``$LLMFORGE_HOME`` or the cwd)."""
    state = ctx.find_object(CliState)
    return resolve_workspace(state.home if state else None)
