"""Running the app with uvicorn: binding, the start-up banner, the request log, stopping.

The socket is bound here, before uvicorn starts, so a port in use is an llmforge error with a
hint (uvicorn would log it and ``sys.exit(1)``) and the real port of ``--port 0`` is known for
the banner. uvicorn's signal handling stops the server on Ctrl-C: it stops accepting, lets
running responses finish for ``graceful_seconds``, cancels the rest (which stops their
generation), then the app's lifespan stops the scheduler. uvicorn's own info lines and access
log are off: the banner and :class:`~llmforge.serving.middleware.RequestLog` replace them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shlex
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from llmforge.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
_LOG_HANDLER_NAME = "llmforge-serve-stderr"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_warning(host: str, api_key_set: bool) -> str | None:
    """The warning for a server others can reach without a key, or None."""
    if api_key_set or is_loopback(host):
        return None
    return (
        f"Serving on {host} without an API key: anyone who can reach this machine can use the "
        "models. Pass --api-key KEY (or set LLMFORGE_API_KEY), or bind to 127.0.0.1."
    )


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``port`` 0: a free one).

    Raises:
        ConfigError: If the address cannot be used (in use, not this machine's, ...).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"Cannot listen on {host}:{port}: {e.strerror or e}.",
            "Pass another --port (0 picks a free one), or stop the program that uses it.",
        ) from None
    return sock


def base_url(host: str, port: int) -> str:
    """The URL clients use (a wildcard address is reached through loopback)."""
    connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in connect and not connect.startswith("["):
        connect = f"[{connect}]"
    return f"http://{connect}:{port}/v1"


def banner(app: Any, host: str, port: int) -> str:
    """The start-up lines: the URL and ready-to-paste ``curl`` and ``openai`` examples."""
    url = base_url(host, port)
    models = app.state.models
    name = next(iter(models))
    chat = models[name].chat_format is not None
    key = app.state.api_key_set
    payload: dict[str, Any] = {"model": name, "max_tokens": 50}
    if chat:
        payload["messages"] = [{"role": "user", "content": "Hello!"}]
    else:
        payload["prompt"] = "Hello"
    endpoint = "chat/completions" if chat else "completions"
    auth = ' -H "Authorization: Bearer $LLMFORGE_API_KEY"' if key else ""
    curl = (
        f"curl {url}/{endpoint} -H 'Content-Type: application/json'{auth} "
        f"-d {shlex.quote(json.dumps(payload))}"
    )
    api_key = 'os.environ["LLMFORGE_API_KEY"]' if key else '"none"'
    call = (
        f'c.chat.completions.create(model={name!r}, messages=[{{"role": "user", '
        f'"content": "Hello!"}}]).choices[0].message.content'
        if chat
        else f'c.completions.create(model={name!r}, prompt="Hello").choices[0].text'
    )
    code = (
        f"import os; from openai import OpenAI; c = OpenAI(base_url={url!r}, "
        f"api_key={api_key}); print({call})"
    )
    listed = ", ".join(models)
    return "\n".join(
        [
            f"Serving {listed} at {url} (OpenAI API; Ctrl-C stops).",
            f"  curl:   {curl}",
            f"  openai: python -c {shlex.quote(code)}",
        ]
    )


def configure_request_log(stream: Any = None) -> None:
    """Send the request log (``llmforge.serve``, one line per request) to stderr, once."""
    logger = logging.getLogger("llmforge.serve")
    logger.setLevel(logging.INFO)
    if not any(h.get_name() == _LOG_HANDLER_NAME for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.set_name(_LOG_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_ready`` once it accepts connections, and ending the
    generations still running ``grace`` seconds after shutdown began.

    Without that, uvicorn's graceful-shutdown timeout cancels the response tasks, which logs
    a CancelledError traceback per stream and cuts the chunked body mid-way; ended by the
    scheduler, each stream sends an error event (the client raises ``APIError``) and closes.
    """

    def __init__(self, app: Any, grace: float, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(_config(app, grace + 2.0))  # uvicorn's cut-off: after ours
        self._app = app
        self._grace = grace
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._grace, self._app.state.scheduler.abort_all)
        try:
            await super().shutdown(sockets=sockets)
        finally:
            timer.cancel()


def _config(app: Any, graceful_seconds: float) -> uvicorn.Config:
    """uvicorn's settings (``graceful_seconds``: its own cut-off for open connections)."""
    return uvicorn.Config(
        app,
        log_level="warning",  # errors only: the banner replaces uvicorn's info lines
        access_log=False,  # RequestLog writes one line per request, with the tokens
        timeout_graceful_shutdown=graceful_seconds,
        server_header=False,
        lifespan="on",
    )


def serve(
    app: Any,
    sock: socket.socket,
    *,
    graceful_seconds: float = 5.0,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C (or SIGTERM), then close ``sock``.

    Args:
        app: From :func:`llmforge.serving.app.create_app`.
        sock: A socket :func:`bind` bound (the CLI binds before it loads the models, so a
            port in use fails at once).
        graceful_seconds: How long running responses may finish after Ctrl-C.
        on_ready: Called once the server accepts connections (the CLI prints its banner).
    """
    server = _Server(app, graceful_seconds, on_ready)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the SIGINT it handled, after its clean shutdown
    finally:
        sock.close()


class ServerThread:
    """The app served on a thread, for tests and notebooks: ``with ServerThread(app) as url``.

    Args:
        app: The app.
        host: The address (a free port is picked).
    """

    def __init__(self, app: Any, host: str = DEFAULT_HOST) -> None:
        self._sock = bind(host, 0)
        self.url = base_url(host, self._sock.getsockname()[1])
        self._server = _Server(app, grace=1.0)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> str:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread ended before it started")
            self._thread.join(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
