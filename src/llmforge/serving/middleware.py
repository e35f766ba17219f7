"""Plain ASGI middleware: the request log, the API key check and the body size limit.

They are pure ASGI (not Starlette's ``BaseHTTPMiddleware``, which buffers streamed responses
through an extra task and breaks disconnect detection). The key is checked before anything
reads the body, so a client without the key learns nothing from a 400 about its body.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmforge.serving.api_errors import APIError
from llmforge.untrusted import terminal_text

log = logging.getLogger("llmforge.serve")

LOG_KEY = "llmforge_serve"  # the scope["state"] entry handlers fill in for the log line
OPEN_PATHS = ("/health",)  # reachable without the key (load balancers, readiness probes)


class RequestLog:
    """One line per request on the ``llmforge.serve`` logger, once its response has ended:
    method, path, status, model, prompt and completion tokens, seconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        scope.setdefault("state", {})

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            log.info("%s", _line(scope, status, time.perf_counter() - start))


def _line(scope: Scope, status: int, seconds: float) -> str:
    # The path is the client's text: made printable so it cannot drive the terminal.
    path = terminal_text(scope.get("path", ""), keep_newlines=False)[:200]
    parts = [scope.get("method", "?"), path, str(status or "-")]
    info: dict[str, Any] = scope.get("state", {}).get(LOG_KEY) or {}
    job = info.get("job")
    if "model" in info:
        parts.append(f"model={info['model']}")
    if job is not None:
        parts += [f"prompt={job.prompt_tokens}", f"completion={job.completion_tokens}"]
        if info.get("stream"):
            parts.append("stream")
        if job.cancelled:
            parts.append("(client disconnected)")
        elif job.finish_reason:
            parts.append(f"finish={job.finish_reason}")
        elif job.error is not None:
            parts.append(f"error={type(job.error).__name__}")
    parts.append(f"{seconds:.2f}s")
    return " ".join(parts)


class APIKeyAuth:
    """Require ``Authorization: Bearer KEY`` on every path but :data:`OPEN_PATHS`.

    Args:
        app: The wrapped app.
        key: The key; compared in constant time, never logged or echoed.
    """

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self._key = key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            err = APIError(
                401,
                "You didn't provide an API key. Pass it in an Authorization header using Bearer "
                "auth (Authorization: Bearer YOUR_KEY).",
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif not hmac.compare_digest(token, self._key):
            err = APIError(
                401,
                "Incorrect API key provided.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            await self.app(scope, receive, send)
            return
        await err.response()(scope, receive, send)


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a 413 (the body is read before the
    handler runs, so a client cannot make the server buffer an unbounded body).

    Args:
        app: The wrapped app.
        limit: The largest body accepted, in bytes.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = APIError(413, f"The request body is larger than {self.limit} bytes.")
        declared = dict(scope.get("headers", ())).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            await too_large.response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            size += len(message.get("body", b""))
            if size > self.limit:
                await too_large.response()(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that returns ``body`` once, then the client's next messages."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
