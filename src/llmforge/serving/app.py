"""The OpenAI-compatible app: ``create_app`` over models that are already loaded.

The app never touches the disk: it serves the :class:`ServedModel` objects it is given, under
their names, and a request can only name one of them (``model`` is looked up in that set, so
no request field is ever a path). Loading is the CLI's job (``cli/serve.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from llmforge import __version__
from llmforge.serving import schemas as s
from llmforge.serving.api_errors import (
    SERVER_ERROR,
    APIError,
    install_error_handlers,
    model_not_found,
    parse_body,
)
from llmforge.serving.completions import (
    ChunkWriter,
    JobStreamingResponse,
    chat_prompt,
    collect,
    completion_prompt,
    plan,
    whole_reply,
)
from llmforge.serving.jobs import Generation, Job, Overloaded, ShuttingDown
from llmforge.serving.middleware import LOG_KEY, APIKeyAuth, BodyLimit, RequestLog
from llmforge.serving.scheduler import Scheduler
from llmforge.serving.served_model import ServedModel

DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_MAX_BODY_BYTES = 16 * 2**20  # far above any prompt a served context can hold
DEFAULT_STREAM_INTERVAL = 0.02  # 50 updates a second look continuous; see engine._Run._send


def create_app(
    models: Sequence[ServedModel],
    *,
    api_key: str | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    stream_interval: float = DEFAULT_STREAM_INTERVAL,
) -> FastAPI:
    """The server app for ``models``.

    Args:
        models: The loaded targets, each served under its ``name``.
        api_key: When set, every path but ``/health`` needs ``Authorization: Bearer KEY``.
        max_concurrency: Requests that may wait per model while one is generated; more are
            refused with 503 and ``Retry-After``.
        max_body_bytes: The largest request body accepted (413 beyond).
        stream_interval: Streamed text is sent at most this often (seconds); tokens made
            faster are sent together (0: every token as its own chunk).

    Raises:
        ValueError: If two models share a name, or there are none.
    """
    served = {m.name: m for m in models}
    if not served or len(served) != len(models):
        raise ValueError("serve at least one model, each under a distinct name")
    scheduler = Scheduler({n: m.adapter for n, m in served.items()}, max_concurrency)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.stop)  # joins the thread off the loop

    # No /docs or /openapi.json: an API server for OpenAI clients, not a browsable one.
    app = FastAPI(
        title="llmforge",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.models = served
    app.state.scheduler = scheduler
    app.state.api_key_set = bool(api_key)
    install_error_handlers(app)
    app.include_router(_router(served, scheduler, stream_interval))
    # add_middleware wraps: the last added runs first (log, then key, then body limit).
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if api_key:
        app.add_middleware(APIKeyAuth, key=api_key)
    app.add_middleware(RequestLog)
    return app


def fingerprint(model: ServedModel) -> str:
    """``system_fingerprint``: what a seeded sample's reproducibility depends on."""
    dev = next((p.device for p in model.adapter.model.parameters()), "cpu")
    facts = f"llmforge {__version__}|torch {torch.__version__}|{dev}|{torch.get_num_threads()}"
    return "fp_" + hashlib.sha256(facts.encode()).hexdigest()[:10]


def _submit(
    scheduler: Scheduler, model: ServedModel, gen: Generation, request: Request, stream: bool
) -> Job:
    """Queue ``gen``; a full queue or a stopping server is a 503."""
    try:
        job = scheduler.submit(model.name, gen, asyncio.get_running_loop())
    except Overloaded as e:
        raise APIError(
            503,
            f"The model `{model.name}` is busy: {scheduler.max_waiting} requests are already "
            f"waiting for it. Retry after {e.retry_after} s.",
            type=SERVER_ERROR,
            code="server_overloaded",
            headers={"Retry-After": str(e.retry_after)},
        ) from None
    except ShuttingDown:
        raise APIError(503, "The server is shutting down.", type=SERVER_ERROR) from None
    request.scope["state"][LOG_KEY].update(job=job, stream=stream)
    return job


def _router(
    served: dict[str, ServedModel], scheduler: Scheduler, stream_interval: float
) -> APIRouter:
    router = APIRouter()
    prints = {name: fingerprint(m) for name, m in served.items()}

    def lookup(name: str, request: Request) -> ServedModel:
        model = served.get(name)
        if model is None:
            raise model_not_found(name)
        request.scope.setdefault("state", {})[LOG_KEY] = {"model": name}
        return model

    @router.get("/health")
    async def health() -> JSONResponse:
        if not scheduler.alive:  # a readiness probe should take this server out
            return JSONResponse({"status": "error"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get("/v1/models")
    async def list_models() -> JSONResponse:
        cards = [s.ModelCard(id=n, created=m.created) for n, m in served.items()]
        return JSONResponse(s.ModelList(data=cards).model_dump())

    @router.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> JSONResponse:
        model = lookup(name, request)
        return JSONResponse(s.ModelCard(id=name, created=model.created).model_dump())

    async def respond(
        model: ServedModel, body: s._Sampling, prompt: list[int], request: Request, chat: bool
    ) -> Response:
        stream = bool(body.stream)
        gen = plan(model, prompt, body, chat=chat, stream_interval=stream_interval)
        job = _submit(scheduler, model, gen, request, stream)
        fp = prints[model.name]
        if stream:
            include = body.include_usage()
            writer = ChunkWriter(
                job, chat=chat, model=model.name, fingerprint=fp, include_usage=include
            )
            return JobStreamingResponse(writer)
        text = await collect(job, request)
        reply = whole_reply(job, text, chat=chat, model=model.name, fingerprint=fp)
        return JSONResponse(reply.model_dump())

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = parse_body(s.ChatCompletionRequest, await request.body())
        model = lookup(body.model, request)
        return await respond(model, body, await chat_prompt(model, body), request, chat=True)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse_body(s.CompletionRequest, await request.body())
        model = lookup(body.model, request)
        return await respond(model, body, await completion_prompt(model, body), request, False)

    return router
