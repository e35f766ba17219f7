"""A target as the server holds it: the loaded model and how chats are rendered for it.

Everything here is ``llmforge generate``'s own machinery (``inference/model_source``,
``data/chat_templates``), so a served reply is rendered and stopped exactly as
``generate --chat`` renders and stops it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from llmforge.adapters.base import ModelAdapter
from llmforge.data.chat_templates import ChatFormat, prompt_ids, resolve_chat_format, stop_token_ids
from llmforge.errors import ChatTemplateError, DataError
from llmforge.inference.model_source import load_for_inference
from llmforge.workspace import Workspace


@dataclass
class ServedModel:
    """One served target.

    Attributes:
        name: The name clients pass as ``model`` (the target as given on the command line).
        adapter: The loaded model; only the scheduler thread runs it.
        meta: The checkpoint's ``meta.json`` or the registry entry.
        chat_format: The template ``generate --chat`` renders with, or None (no chat).
        chat_error: Why the model cannot chat (a char-level tokenizer), when it cannot.
        chat_stop_ids: The end-of-turn ids that end a chat reply (besides the model's own).
        prompt_tokenizer: A private copy of the tokenizer for rendering and encoding prompts
            on request threads: a Hugging Face fast tokenizer must not be used by two threads
            at once, and the scheduler thread decodes with the adapter's own.
        created: Unix time the model was loaded (``created`` in ``/v1/models``).
    """

    name: str
    adapter: ModelAdapter
    meta: dict[str, Any]
    chat_format: ChatFormat | None = None
    chat_error: str | None = None
    chat_stop_ids: tuple[int, ...] = ()
    prompt_tokenizer: Any = None
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, name: str, adapter: ModelAdapter, meta: dict[str, Any]) -> ServedModel:
        """Wrap a loaded model, resolving its chat format as ``ChatSession`` does.

        Raises:
            ChatTemplateError: If the model's template is broken (the server refuses to start,
                as ``generate --chat`` refuses to chat).
        """
        adapter.model.eval()
        tok = copy.deepcopy(adapter.tokenizer)
        served = cls(name=name, adapter=adapter, meta=meta, prompt_tokenizer=tok)
        try:
            # ChatSession's call: the template recorded in the checkpoint wins, then the
            # tokenizer's own, then ChatML. It installs the template on the copy only.
            served.chat_format = resolve_chat_format(tok, None, meta.get("chat"))
        except ChatTemplateError:
            raise
        except DataError as e:
            served.chat_error = e.message
            return served
        # ChatSession adds these to the adapter; passing them per request instead keeps
        # /v1/completions stopping exactly where `generate --prompt` stops.
        served.chat_stop_ids = tuple(stop_token_ids(tok, served.chat_format))
        return served

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt ids ``generate --chat`` feeds the model for ``messages``.

        Raises:
            ChatTemplateError: If the template refuses the conversation.
        """
        return prompt_ids(self.prompt_tokenizer, messages, self.chat_format)

    def encode(self, text: str) -> list[int]:
        """``text`` as ids, as ``generate --prompt`` encodes it."""
        return self.prompt_tokenizer.encode(text)


def load_target(
    workspace: Workspace,
    target: str,
    *,
    device: str = "auto",
    allow_base_mismatch: bool = False,
    warnings: list[str] | None = None,
) -> ServedModel:
    """Load ``target`` (a registry name, RUN, ``RUN/step-N`` or a checkpoint path) to serve.

    Raises:
        LLMForgeError: If the target cannot be loaded (as ``llmforge generate`` reports it).
    """
    adapter, meta = load_for_inference(
        workspace,
        target,
        allow_base_mismatch=allow_base_mismatch,
        warnings=warnings,
        device=device,
    )
    return ServedModel.build(target, adapter, meta)
