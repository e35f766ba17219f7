"""The import pipeline: resolve -> check -> license -> download -> verify -> register.

``import_model`` brings a model from the hub (id or URL) or from a local folder into the
registry. It never prints: it reports through :class:`~llmforge.importing.plan.ImportHooks`,
which the CLI fills with Rich progress and a license prompt. Files are gathered in
``models/.staging/`` and the folder is renamed to ``models/<name>/`` in the same registry
transaction that adds the entry, so the entry appears only after every file is verified, and
any failure (or Ctrl-C) leaves the registry and ``models/`` as they were. See
:mod:`llmforge.store.blobs` for caching and sharing.
"""

from __future__ import annotations

from llmforge.errors import (
    InvalidModelNameError,
    InvalidSourceError,
)
from llmforge.importing.plan import ImportHooks, ImportRequest, ImportResult
from llmforge.importing.source import check_revision, check_token, parse_source, token_origin
from llmforge.importing.undo import leave_no_trace
from llmforge.store import blobs
from llmforge.store.commit import commit_staged
from llmforge.store.registry import (
    ModelRegistry,
    check_model_name,
    free_name,
    name_taken_error,
    suggest_model_name,
)
from llmforge.workspace import Workspace


def import_model(
    ws: Workspace, req: ImportRequest, hooks: ImportHooks | None = None
) -> ImportResult:
    """Import a model from the hub or a local folder and register it.

    Args:
        ws: The workspace.
        req: What to import and how.
        hooks: Progress and prompt callbacks.

    Returns:
        The result, with the registered entry.

    Raises:
        LLMForgeError: A typed error for every failure (hub, license, architecture, disk,
            checksum, name taken); the registry and model folders are then unchanged.
    """
    hooks = hooks or ImportHooks()
    source = parse_source(req.source)
    if req.revision is not None:
        check_revision(req.revision, "--revision")
    url_rev = source.revision
    if source.kind == "hub" and url_rev and req.revision and req.revision != url_rev:
        raise InvalidSourceError(
            f"The URL names revision {url_rev!r} but --revision is {req.revision!r}.",
            "Give the revision once: in the URL or with --revision.",
        )
    if source.kind == "hub":
        token, origin = token_origin(req.token, req.token_from)
        check_token(token, origin)
    origin = source.repo_id if source.kind == "hub" else (source.path.name if source.path else "")
    registry = ModelRegistry(ws)
    name = _check_name(req.name or suggest_model_name(origin or "model"), registry, req.force)
    registry.check_writable()
    if source.kind == "hub":
        from llmforge.importing.from_hub import gather_from_hub

        gather = gather_from_hub
    else:
        from llmforge.importing.from_folder import gather_from_folder

        gather = gather_from_folder
    with leave_no_trace(ws, name) as work:
        result = gather(ws, source, req, name, work, hooks)
        assert work.staging is not None  # gather began the work after consent
        result.replaced = commit_staged(ws, registry, result.entry, work.staging, req.force)
    blobs.prune_cache(ws)  # now that this import no longer holds the cache
    return result


def _check_name(name: str, registry: ModelRegistry, force: bool) -> str:
    """Check the name; a refusal suggests a name that is valid and free."""
    try:
        check_model_name(name)
    except InvalidModelNameError as e:
        free = free_name(str(name), set(registry.names()))
        raise InvalidModelNameError(e.message, f"Try --name {free!r}.") from None
    if registry.exists(name) and not force:
        raise name_taken_error(name, set(registry.names()))
    return name
