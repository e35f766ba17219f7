"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can see goes through here, including FastAPI's own. A body that fails
validation is OpenAI's 400 ``invalid_request_error`` (the official clients map 400 to
``BadRequestError``; FastAPI's 422 would surface as ``UnprocessableEntityError``, which no code
written for OpenAI expects); bodies are parsed by :func:`parse_body` as JSON whatever the
Content-Type says (``curl -d`` sends a form type), and FastAPI's own 422s are rewritten too.
Starlette's 404/405 for an unknown route get the same shape. An unexpected exception is logged
with its traceback and answered with a 500 that does not echo it (it could hold paths).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmforge.serving.schemas import ErrorBody, ErrorDetail

log = logging.getLogger("llmforge.serve")
M = TypeVar("M", bound=BaseModel)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error response: raise it anywhere in a handler.

    Args:
        status: The HTTP status.
        message: What went wrong, for the client.
        type: OpenAI's error type (``invalid_request_error``, ``server_error``, ...).
        param: The request field at fault, if one is.
        code: OpenAI's machine-readable code (``model_not_found``, ...), if one applies.
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return ErrorBody(error=self.detail).model_dump()

    def response(self) -> JSONResponse:
        """The response to send."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str) -> APIError:
    """OpenAI's 404 for a model the server does not serve."""
    return APIError(
        404,
        f"The model `{name}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def validation_error(errors: Sequence[Any]) -> APIError:
    """A 400 for pydantic's ``errors()``: the first problem as a sentence, naming its field."""
    if not errors:
        return bad_request("The request body is not valid.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return bad_request("We could not parse the JSON body of your request (it is not JSON).")
    # Union members appear in the location ("str", "list[int]"): they name no field.
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    loc = [p for p in loc if not any(c in p for c in "[]|") and p not in ("str", "int")]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if param is None:
        return bad_request(f"The request body must be a JSON object: {msg}{more}")
    return bad_request(f"{param}: {msg}{more}", param)


def parse_body(model: type[M], raw: bytes) -> M:
    """``raw`` (JSON, whatever the Content-Type says) as ``model``.

    Raises:
        APIError: 400 naming the first problem.
    """
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc.errors()).response()


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method not allowed ({request.method} {request.url.path})"
    else:
        message = str(exc.detail)
    err = APIError(exc.status_code, message, headers=dict(exc.headers or {}))
    return err.response()


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    err = APIError(500, "The server had an error while processing your request.", type=SERVER_ERROR)
    return err.response()


def install_error_handlers(app: FastAPI) -> None:
    """Make every error ``app`` returns OpenAI-shaped."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(Exception, _on_unexpected)
