"""Documents to score: token ids with the targets that count, read as training reads data.

Plain text and ``jsonl-text`` records are documents of their own, every target scored (from
the second token on, unless a prefix token is prepended). ``chat`` and ``prompt-completion``
records are encoded and masked by :mod:`llmforge.data.chat_templates`, the functions
training's :mod:`llmforge.data.batches` calls, so only the tokens training puts a loss on
count (``train_on_prompt`` respected). Files are read by training's own reader
(:func:`llmforge.data.data_files.read_data_file`): the same formats, the same errors; a hub
dataset (``hf://datasets/...``) by training's :func:`llmforge.data.hub_records.read_hub_data`.

One difference from training: training cuts an example at ``block_size + 1`` tokens, while
eval scores all of it in windows (the numbers agree whenever the example fits).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmforge.data.chat_templates import encode_chat, encode_completion, resolve_chat_format
from llmforge.data.data_files import DataFile, read_data_file
from llmforge.data.hub_records import read_hub_data
from llmforge.data.hub_uri import is_hub_uri
from llmforge.errors import ConfigError, DataError
from llmforge.untrusted import brief

_ZERO = torch.zeros(1, dtype=torch.int8)


@dataclass(frozen=True)
class Document:
    """One document to score.

    Attributes:
        ids: Token ids ``(L,)``, any prefix token included.
        scored: ``(L,)`` bool; ``scored[j]``: token ``j`` counts as a target (never ``j = 0``).
        n_bytes: UTF-8 bytes of the scored text.
    """

    ids: torch.Tensor
    scored: torch.Tensor
    n_bytes: int

    @property
    def tokens(self) -> int:
        """How many targets are scored."""
        return int(self.scored[1:].sum())


def _scored_bytes(decode: Callable[[list[int]], str], ids: list[int], scored: torch.Tensor) -> int:
    """UTF-8 bytes of the scored tokens: each maximal run of scored tokens decoded on its own.

    A run is a piece that was tokenized on its own (an assistant turn, a completion, a whole
    document after its first token), so its decoded text is exactly the text that was scored.
    """
    edges = torch.diff(scored.to(torch.int8), prepend=_ZERO, append=_ZERO)
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return sum(len(decode(ids[a:b]).encode("utf-8")) for a, b in zip(starts, ends, strict=True))


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """Ids to the text they stand for, special tokens (EOS, end-of-turn) left out.

    Bits per byte count the bytes of the user's text: a special token carries NLL but no
    bytes of it. Tokenizers without special tokens (the char-level one) decode as they are.
    """
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        return tokenizer.decode
    return lambda ids: hf.decode(list(ids), skip_special_tokens=True)


def make_document(
    ids: Sequence[int],
    scored: Sequence[bool],
    decode: Callable[[list[int]], str],
    text: str | None = None,
) -> Document:
    """A :class:`Document` from ids and per-token target flags (``scored[0]`` is ignored).

    Args:
        ids: Token ids, any prefix included.
        scored: Whether each token is a target.
        decode: Ids to text, for the byte count of the scored text (:func:`text_decoder`).
        text: The document's text when every one of its tokens is scored (a prefix token
            was prepended): its bytes are counted directly.
    """
    flags = torch.tensor([False, *list(scored[1:])], dtype=torch.bool)
    ids = list(ids)
    n_bytes = len(text.encode("utf-8")) if text is not None else _scored_bytes(decode, ids, flags)
    return Document(torch.tensor(ids, dtype=torch.long), flags, n_bytes)


def text_documents(
    tokenizer: Any, texts: Iterable[str], prefix_id: int | None = None
) -> list[Document]:
    """Plain-text documents, each scored on its own from its first token.

    Args:
        tokenizer: Has ``encode(text) -> ids`` (no special tokens) and ``decode(ids)``.
        texts: The documents.
        prefix_id: Prepended to each document so its first token is a target too (a BOS the
            tokenizer adds, or lm-eval's EOS prefix); None: the first token is context only.
    """
    docs = []
    for text in texts:
        ids = tokenizer.encode(text)
        if prefix_id is not None:
            ids = [prefix_id, *ids]
        whole = text if prefix_id is not None else None
        docs.append(make_document(ids, [True] * len(ids), text_decoder(tokenizer), whole))
    return docs


def record_documents(
    tokenizer: Any,
    records: Iterable[dict[str, Any]],
    fmt: str,
    chat_format: Any = None,
    train_on_prompt: bool = False,
    source: str = "the data file",
) -> list[Document]:
    """Chat or prompt/completion records, masked exactly as training masks them.

    Args:
        tokenizer: An ``llmforge.modeling.tokenizers.HFTokenizer``.
        records: Valid records of ``fmt`` (from ``read_data_file``).
        fmt: ``chat`` or ``prompt-completion``.
        chat_format: The ``ChatFormat`` (chat only): the target's recorded one.
        train_on_prompt: Score the prompt tokens too, as training with that setting does.
        source: The file, for messages.

    Raises:
        DataError: If a conversation cannot be rendered with the template (as in training).
    """
    docs, decode = [], text_decoder(tokenizer)
    for r in records:
        try:
            if fmt == "chat":
                ids, trained = encode_chat(tokenizer, chat_format, r["messages"], train_on_prompt)
            else:
                ids, trained = encode_completion(
                    tokenizer, r["prompt"], r["completion"], train_on_prompt
                )
        except ValueError as e:  # the message training gives for the same file
            raise DataError(
                f"Cannot render a conversation of {source} with the chat template: {e}.",
                "Evaluate with a model whose chat template renders conversations as prefixes.",
            ) from e
        docs.append(make_document(ids, trained, decode))
    return docs


def read_eval_file(path: str, data_format: str = "auto") -> DataFile:
    """Read a held-out file with training's reader (no line skipped: every record counts).

    Raises:
        BadRecordError, DataError: As training raises them for the same file.
    """
    return read_data_file(path, data_format, skip_bad_lines=False)


def read_eval_data(
    path: str,
    data_format: str = "auto",
    split: str | None = None,
    config: str | None = None,
    layout: str = "prompt",
) -> tuple[DataFile, dict[str, Any] | None]:
    """A held-out file, or a split of a hub dataset (``hf://datasets/...``, read as training
    reads it; ``split`` defaults to ``test``), and the hub split's lineage entry (None for a
    file). ``layout``: how Alpaca rows become records (``prompt`` or ``chat``).

    Raises:
        ConfigError: For a split or config given with a local file, or a format with a hub one.
        BadRecordError, DataError, HubError: As training raises them for the same data.
    """
    if not is_hub_uri(path):
        if split is not None or config is not None:
            raise ConfigError(
                f"--data-split and --data-config apply to hub datasets only, but --data is "
                f"the file {brief(path, 120)}.",
                "Pass --data hf://datasets/ORG/NAME, or drop --data-split / --data-config.",
            )
        return read_eval_file(path, data_format), None
    if data_format != "auto":
        raise ConfigError(
            f"--data-format {brief(data_format, 30)} does not apply to a hub dataset: its "
            "format is recognised from its columns.",
            "Drop --data-format.",
        )
    hub = read_hub_data(path, split or "test", config=config, alpaca_layout=layout).train
    return hub.data, hub.lineage


def file_documents(
    f: DataFile,
    tokenizer: Any,
    *,
    chat_format: Any = None,
    train_on_prompt: bool = False,
    prefix_id: int | None = None,
    limit: int | None = None,
) -> list[Document]:
    """The documents of a data file read by :func:`read_eval_file`, for one tokenizer.

    A ``text`` file is one document; ``jsonl-text`` records one each; ``chat`` and
    ``prompt-completion`` records are masked as in training (see :func:`record_documents`).

    Args:
        f: The file, read.
        tokenizer: An llmforge tokenizer (``HFTokenizer`` for chat and prompt/completion).
        chat_format: The ``ChatFormat`` for chat records (the target's recorded template:
            ``resolve_chat_format(tok, None, meta.get("chat"))``); None: resolved here.
        train_on_prompt: Score prompts too, as training with that setting does.
        prefix_id: Prepended to text documents (see :func:`text_documents`).
        limit: Use the first ``limit`` documents only.

    Raises:
        DataError: If the records need a subword tokenizer, or a template fails.
    """
    with _long_inputs_welcome():
        if f.format == "text":
            return text_documents(tokenizer, [f.text], prefix_id)
        records = f.records[:limit] if limit is not None else f.records
        if f.format == "jsonl-text":
            return text_documents(tokenizer, [r["text"] for r in records], prefix_id)
        if f.format == "chat" and chat_format is None:
            chat_format = resolve_chat_format(tokenizer)
        return record_documents(
            tokenizer, records, f.format, chat_format, train_on_prompt, f.source
        )


@contextlib.contextmanager
def _long_inputs_welcome() -> Iterator[None]:
    """Silence transformers' "sequence length is longer than the specified maximum" warning:
    documents are encoded whole on purpose and scored in windows of the model's context."""
    logger = logging.getLogger("transformers.tokenization_utils_base")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def default_prefix_id(hf_tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer itself prepends one (Llama), else None (Qwen, GPT-2).

    llmforge's ``HFTokenizer.encode`` never adds special tokens; held-out text gets a BOS
    only where the model's own tokenizer would have added it.
    """
    bos = getattr(hf_tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = hf_tokenizer("x", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None
