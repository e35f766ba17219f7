"""From a request body to a generation, and from a generation to OpenAI's responses.

Prompts are rendered and encoded on a worker thread of the event loop's pool (a long prompt
never stalls the loop), with the served model's private prompt tokenizer. Limits are checked
before a job is queued, so a request that cannot succeed gets its 400 at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llmforge.errors import ChatTemplateError
from llmforge.inference.generation import SamplingOptions
from llmforge.serving import schemas as s
from llmforge.serving.api_errors import SERVER_ERROR, APIError, bad_request
from llmforge.serving.jobs import Event, Generation, Job, ShuttingDown
from llmforge.serving.served_model import ServedModel
from llmforge.untrusted import unicode_problem

OPENAI_DEFAULT_TEMPERATURE = 1.0  # what a client that sends none expects (llmforge's CLI: 0.8)
DEFAULT_MAX_TOKENS = 200  # a chat with a model without a context limit (generate's default)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _check_text(text: str, param: str) -> None:
    problem = unicode_problem(text) if text else None
    if problem is not None:  # a lone surrogate ("\ud800" in JSON) would fail in the tokenizer
        raise bad_request(f"{param} is not valid Unicode text: it holds {problem}.", param)


async def chat_prompt(model: ServedModel, body: s.ChatCompletionRequest) -> list[int]:
    """The prompt ids for ``body.messages``, rendered as ``generate --chat`` renders them.

    Raises:
        APIError: 400 if the model cannot chat, a message is not valid text, or the model's
            template refuses the conversation.
    """
    if model.chat_format is None:
        raise bad_request(
            f"The model `{model.name}` cannot chat: {model.chat_error} "
            "Use /v1/completions with a prompt instead.",
            "model",
        )
    messages = []
    for i, m in enumerate(body.messages):
        text = m.text()
        _check_text(text, f"messages.{i}.content")
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    try:
        return await run_in_threadpool(model.chat_prompt_ids, messages)
    except ChatTemplateError as e:
        raise bad_request(f"{e.message} {e.hint or ''}".strip(), "messages") from None


async def completion_prompt(model: ServedModel, body: s.CompletionRequest) -> list[int]:
    """The prompt ids for ``body.prompt`` (text, encoded as ``generate --prompt`` does, or ids).

    Raises:
        APIError: 400 for text that is not valid Unicode, or ids outside the vocabulary.
    """
    if isinstance(body.prompt, str):
        _check_text(body.prompt, "prompt")
        return await run_in_threadpool(model.encode, body.prompt)
    vocab = model.adapter.tokenizer.vocab_size
    bad = next((i for i in body.prompt if not 0 <= i < vocab), None)
    if bad is not None:
        raise bad_request(f"Token id {bad} is outside the vocabulary (0..{vocab - 1}).", "prompt")
    return list(body.prompt)


def plan(
    model: ServedModel,
    prompt: list[int],
    body: s._Sampling,
    *,
    chat: bool,
    stream_interval: float = 0.0,
) -> Generation:
    """The generation for ``body``: sampling options, length and stop conditions.

    The completion is as long as asked but never longer than the room the context leaves
    (``finish_reason`` is then ``length``). Without ``max_tokens`` a chat reply may fill that
    room and a legacy completion is 16 tokens long, as OpenAI does.

    Raises:
        APIError: 400 when the prompt leaves no room in the model's context.
    """
    limit = model.adapter.max_context
    if limit and len(prompt) >= limit:
        what = "messages" if chat else "prompt"
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, your {what} "
            f"resulted in {len(prompt)} tokens, which leaves no room for a completion. "
            f"Please reduce the length of the {what}.",
            what,
            "context_length_exceeded",
        )
    room = limit - len(prompt) if limit else None
    asked = body.max_new_tokens()
    if asked is None and not chat:
        asked = COMPLETIONS_DEFAULT_MAX_TOKENS
    bounds = [n for n in (asked, room) if n is not None]
    length = min(bounds) if bounds else DEFAULT_MAX_TOKENS
    opts = SamplingOptions(
        max_new_tokens=length,
        temperature=OPENAI_DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        seed=body.seed,
        stop_token_ids=model.chat_stop_ids if chat else (),
    )
    for stop in body.stop or []:
        _check_text(stop, "stop")
    # A plain response needs the text only at the end: no per-token wake-ups of the loop.
    interval = stream_interval if body.stream else math.inf
    return Generation(prompt, opts, tuple(body.stop or ()), interval)


def usage(job: Job) -> s.Usage:
    """The job's token counts."""
    p, c = job.prompt_tokens, job.completion_tokens
    return s.Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def whole_reply(job: Job, text: str, *, chat: bool, model: str, fingerprint: str) -> Any:
    """The response body of a finished job that was not streamed."""
    common: dict[str, Any] = {
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "usage": usage(job),
    }
    reason = job.finish_reason or "stop"
    uid = uuid.uuid4().hex
    if chat:
        message = s.AssistantMessage(content=text)
        choice = s.ChatChoice(message=message, finish_reason=reason)
        return s.ChatCompletion(id=f"chatcmpl-{uid}", choices=[choice], **common)
    done = s.CompletionChoice(text=text, finish_reason=reason)
    return s.Completion(id=f"cmpl-{uid}", choices=[done], **common)


def _failure(event: Event) -> APIError:
    if event.kind == "cancelled":
        return APIError(499, "The client closed the request.", type=SERVER_ERROR)
    err = event.error
    if isinstance(err, ShuttingDown):
        return APIError(503, str(err), type=SERVER_ERROR)
    message = "The model failed while generating."
    if err is not None and hasattr(err, "message"):  # an LLMForgeError says what happened
        message = f"{message} {err.message}"
    return APIError(500, message, type=SERVER_ERROR)


async def collect(job: Job, request: Request) -> str:
    """The whole completion of ``job``, stopping it if the client disconnects first.

    Raises:
        APIError: If the generation failed (500) or the client went away (499, never seen).
    """
    watcher = asyncio.create_task(_cancel_on_disconnect(job, request))
    try:
        parts: list[str] = []
        async for event in job.events():
            if event.kind == "text":
                parts.append(event.text)
            elif event.kind != "done":
                raise _failure(event)
        return "".join(parts)
    finally:
        watcher.cancel()
        job.cancel()  # a no-op when it ended; stops it when this handler is cancelled


async def _cancel_on_disconnect(job: Job, request: Request) -> None:
    # The body has been read: the next ASGI message is the client's disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


class ChunkWriter:
    """The server-sent events of one streamed response, in OpenAI's chunk format.

    Args:
        job: The generation.
        chat: Chat chunks (``chat.completion.chunk``), else legacy ``text_completion`` ones.
        model: The model name to report.
        fingerprint: ``system_fingerprint``.
        include_usage: Whether the stream ends with a usage chunk (``stream_options``); every
            chunk then has ``usage: null`` before it, as OpenAI sends it.
    """

    def __init__(
        self, job: Job, *, chat: bool, model: str, fingerprint: str, include_usage: bool
    ) -> None:
        self.job = job
        self.chat = chat
        self.include_usage = include_usage
        prefix = "chatcmpl" if chat else "cmpl"
        self._common = {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": fingerprint,
        }
        # Text chunks differ only in their text: render one around a marker once, then each
        # chunk is two concatenations instead of building and dumping pydantic models.
        marker = "\u0000text\u0000"
        head, _, tail = self._chunk(marker, None).partition(json.dumps(marker))
        self._text_head, self._text_tail = head, tail

    def _chunk(self, text: str | None, reason: str | None, *, role: bool = False) -> str:
        if self.chat:
            delta = s.Delta(role="assistant" if role else None, content=text)
            choice = s.ChunkChoice(delta=delta, finish_reason=reason)
            chunk: Any = s.ChatCompletionChunk(choices=[choice], **self._common)
        else:
            choice = s.CompletionChoice(text=text or "", finish_reason=reason)
            chunk = s.Completion(choices=[choice], **self._common)
        return _sse(chunk.model_dump_json(exclude=None if self.include_usage else {"usage"}))

    def text_chunk(self, text: str) -> str:
        """The event for a piece of text (what ``_chunk(text, None)`` renders, faster)."""
        return self._text_head + json.dumps(text, ensure_ascii=False) + self._text_tail

    async def events(self) -> AsyncIterator[str]:
        """The SSE lines, ending with ``data: [DONE]`` (or an error event)."""
        if self.chat:  # OpenAI's first chunk names the role, with empty content
            yield self._chunk("", None, role=True)
        async for event in self.job.events():
            if event.kind == "text":
                yield self.text_chunk(event.text)
            elif event.kind == "done":
                yield self._chunk(None if self.chat else "", event.finish_reason)
            else:
                # Mid-stream, the status is already sent: the official clients raise an
                # APIError for a data line holding "error".
                yield _sse(_json(_failure(event).body()))
                return
        if self.include_usage:
            cls: Callable[..., Any] = s.ChatCompletionChunk if self.chat else s.Completion
            yield _sse(cls(choices=[], usage=usage(self.job), **self._common).model_dump_json())
        yield "data: [DONE]\n\n"


def _sse(data: str) -> str:
    return f"data: {data}\n\n"


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class JobStreamingResponse(StreamingResponse):
    """A streamed response that stops its job however the response ends.

    Starlette cancels the body iterator when the client disconnects (ASGI spec < 2.4, as
    uvicorn reports) or raises on the failed send (2.4+); either way this ``finally`` runs,
    unlike an async generator's own, which may only run when it is garbage-collected.
    """

    def __init__(self, writer: ChunkWriter) -> None:
        super().__init__(writer.events(), media_type="text/event-stream", headers=SSE_HEADERS)
        self._job = writer.job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.cancel()
