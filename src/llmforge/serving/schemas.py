"""Request and response bodies of the OpenAI-compatible API (OpenAI's field names).

**Unknown request fields are ignored**, as most OpenAI-compatible servers do: clients (SDKs,
LangChain, editors) send vendor fields such as ``user``, ``metadata``, ``store`` or
``parallel_tool_calls`` that do not change what a plain model should produce. Known OpenAI
fields that *would* change the result and that llmforge cannot honour (``n > 1``,
``logprobs``, ``tools``, penalties, ``logit_bias``, a JSON ``response_format``, ``echo``,
``best_of``, ``suffix``) are refused with a 400 naming the field, rather than silently
answering something else. ``top_k`` is accepted as an extension (vLLM and others do too).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    """``stream_options``: ``include_usage`` adds a final chunk with the usage."""

    include_usage: bool = False


class TextPart(_Body):
    """One part of a message's content; only text parts are understood."""

    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    """A message of the conversation.

    ``developer`` is OpenAI's newer name for ``system`` and is rendered as ``system``.
    Tool and function messages are refused: llmforge models are not trained to call tools.
    """

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @model_validator(mode="after")
    def _content(self) -> ChatMessage:
        # OpenAI allows no content only on an assistant turn (one that called tools).
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs 'content'")
        return self

    def text(self) -> str:
        """The content as one string (text parts joined, as OpenAI concatenates them)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class _Sampling(_Body):
    """Fields the chat and legacy completion requests share."""

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=_SEED_MIN, le=_SEED_MAX)
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        return [s for s in stops if s]  # an empty stop string would end every reply at once

    @field_validator("n")
    @classmethod
    def _n(cls, v: int | None) -> int:
        if v not in (None, 1):
            raise ValueError("only n=1 is supported (one choice per request)")
        return 1

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, v: float | None) -> None:
        if v not in (None, 0, 0.0):
            raise ValueError("presence and frequency penalties are not supported")

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> None:
        if v:
            raise ValueError("logit_bias is not supported")

    def max_new_tokens(self) -> int | None:
        """The requested completion length, if any."""
        return self.max_tokens

    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _logprobs(cls, v: Any) -> None:
        if v:
            raise ValueError("logprobs are not supported")

    @field_validator("tools", "functions")
    @classmethod
    def _tools(cls, v: list[Any] | None) -> None:
        if v:
            raise ValueError("tool and function calling is not supported")

    @field_validator("response_format")
    @classmethod
    def _format(cls, v: dict[str, Any] | None) -> None:
        if v and v.get("type", "text") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported")

    def max_new_tokens(self) -> int | None:
        # max_completion_tokens replaced max_tokens in OpenAI's API; it wins when both are set.
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one prompt, as text or as token ids."""

    prompt: str | list[str] | list[int]
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str] | list[int]) -> str | list[int]:
        if isinstance(v, str):
            return v
        if v and all(isinstance(p, str) for p in v):
            if len(v) != 1:
                raise ValueError("one prompt per request (a list of prompts is not supported)")
            return v[0]
        if not v:
            raise ValueError("the prompt is empty: pass a string or a list of token ids")
        return v

    @field_validator("echo", "suffix", "logprobs")
    @classmethod
    def _unsupported(cls, v: Any) -> None:
        if v:
            raise ValueError("echo, suffix and logprobs are not supported")

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v: int | None) -> None:
        if v not in (None, 1):
            raise ValueError("only best_of=1 is supported")


# -- responses -----------------------------------------------------------------------------
FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    """Token counts; ``completion_tokens`` counts the tokens returned (no stop token)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    """A streamed piece of the reply; absent fields are left out (``{}`` in the last chunk)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """A legacy completion, and (with ``usage`` None) one chunk of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmforge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
