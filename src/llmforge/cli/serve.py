"""``llmforge serve``: serve models and checkpoints over the OpenAI API until Ctrl-C."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmforge.cli._context import workspace


def serve(
    ctx: typer.Context,
    targets: Annotated[
        list[str],
        typer.Argument(
            help="What to serve, as `generate` takes it: a registry model name, a run, "
            "RUN/step-N or a checkpoint path. Each is served under the name given here.",
            show_default=False,
            metavar="TARGET",
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0 picks a free one).")
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LLMFORGE_API_KEY",
            help="Require `Authorization: Bearer KEY` on every request but /health "
            "(default: $LLMFORGE_API_KEY, which keeps the key out of `ps`; unset: open).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device", help="auto (a CUDA GPU when one is visible, else the CPU), cpu or cuda."
        ),
    ] = "auto",
    max_concurrency: Annotated[
        int,
        typer.Option(
            "--max-concurrency",
            min=1,
            help="Requests that may wait per model while one is generated; more get 503 "
            "with Retry-After.",
        ),
    ] = 8,
    allow_base_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-base-mismatch",
            help="Use a LoRA adapter even though its base model's files changed (experts only).",
        ),
    ] = False,
) -> None:
    """Serve models over the OpenAI API (chat and completions) until Ctrl-C."""
    from llmforge.cli import _render as r

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, not {device!r}.")
    if len(set(targets)) != len(targets):
        raise typer.BadParameter("each TARGET may be given once (it is the model's name).")
    key = _checked_key(api_key)
    serving = _serving_modules()
    create_app, runner, load_target = serving
    warning = runner.exposure_warning(host, key is not None)
    if warning:
        r.print_warning(warning)
    sock = runner.bind(host, port)  # a port in use fails now, not after minutes of loading
    try:
        models = [_load(ctx, load_target, t, device, allow_base_mismatch) for t in targets]
        app = create_app(models, api_key=key, max_concurrency=max_concurrency)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    runner.configure_request_log()
    runner.serve(app, sock, on_ready=lambda: r.print_text(runner.banner(app, host, bound)))
    r.print_text("Server stopped.", r.stderr())


def _checked_key(api_key: str | None) -> str | None:
    """The API key, or None (no key); never echoed in a message."""
    from llmforge.errors import ConfigError

    if not api_key:
        return None
    if not all(33 <= ord(c) <= 126 for c in api_key):
        raise ConfigError(
            "The API key (--api-key or $LLMFORGE_API_KEY) holds a space, a control character "
            "or a non-ASCII character, which an HTTP Authorization header cannot carry.",
            "Use printable ASCII without spaces, e.g. the output of `openssl rand -hex 16`.",
        )
    return api_key


def _serving_modules() -> tuple[Any, Any, Any]:
    """``create_app``, the runner module and ``load_target``, or the install hint."""
    from llmforge.errors import ConfigError

    try:
        from llmforge.serving import runner
        from llmforge.serving.app import create_app
        from llmforge.serving.served_model import load_target
    except ImportError as e:  # fastapi / uvicorn are the optional `serve` extra
        if (e.name or "").split(".")[0] not in ("fastapi", "uvicorn", "starlette", "pydantic"):
            raise
        raise ConfigError(
            f"llmforge serve needs FastAPI and uvicorn ({e.name} is not installed).",
            "Install them with: pip install 'llmforge[serve]'",
        ) from None
    return create_app, runner, load_target


def _load(
    ctx: typer.Context, load_target: Any, target: str, device: str, allow_base_mismatch: bool
) -> Any:
    """Load one target, printing any warning and a line saying what it serves."""
    from llmforge.cli import _render as r

    notes: list[str] = []
    model = load_target(
        workspace(ctx),
        target,
        device=device,
        allow_base_mismatch=allow_base_mismatch,
        warnings=notes,
    )
    for note in notes:
        r.print_warning(note)
    chat = "chat and completions" if model.chat_format is not None else "completions only"
    context = model.adapter.max_context or "unbounded"
    r.print_text(f"Loaded {target} ({chat}, context {context} tokens).", r.stderr())
    return model
