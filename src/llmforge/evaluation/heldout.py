"""Held-out loss: token-weighted mean next-token NLL of documents, batched, in rolling windows.

Definitions (docs/eval.md says the same for users):

- A **document** (``documents.py``) is a token sequence ``s_0 .. s_{L-1}`` with a per-token
  flag ``scored[j]``.
  Token ``j >= 1`` is a *target*, predicted from ``s_0 .. s_{j-1}``; ``s_0`` never is.
  Plain text has every target scored; a chat or prompt/completion record only the tokens
  that training puts a loss on (``data/chat_templates``' masks, ``train_on_prompt`` included).
  Nothing is prepended unless asked (``prefix_id``: a BOS the tokenizer adds, or lm-eval's
  EOS prefix that makes ``s_0`` a target too).
- **Windows** (context ``C``, stride ``S <= C``): targets are cut into consecutive blocks, the
  first of up to ``C`` targets (``1..C``), then blocks of up to ``S``. The block ending at
  target ``e`` is scored by one forward over the ``C`` tokens before it,
  ``s_{max(0, e-C)} .. s_{e-1}``, keeping only the block's targets. Every target is scored
  exactly once, with at least ``C - S + 1`` tokens of context (all of them when it is within
  the first ``C``). ``S = C`` is lm-eval's ``loglikelihood_rolling`` (``context_len=1``).
- **loss** = sum of scored NLLs / number of scored tokens (nats); **perplexity** = exp(loss);
  **bits_per_byte** = sum of NLLs / ln 2 / UTF-8 bytes of the scored text (special tokens
  such as EOS or ``<|im_end|>`` carry NLL but no bytes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmforge.evaluation.documents import Document
from llmforge.modeling.fused_loss import head_nll

IGNORE = -100
# Scores rows of (input_ids (B, T), selected positions (B, T) bool, their targets (N,)) -> NLL (N,)
RowScorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Window:
    """One forward: inputs ``ids[start:end]`` of document ``doc``, targets ``ids[start+1:end+1]``;
    the targets ``first .. end`` (document positions) are scored."""

    doc: int
    start: int
    end: int
    first: int


@dataclass(frozen=True)
class HeldoutResult:
    """Held-out metrics of a set of documents.

    Attributes:
        loss: Token-weighted mean next-token NLL (nats).
        perplexity: ``exp(loss)``.
        tokens: Scored tokens.
        bytes: UTF-8 bytes of the scored text.
        bits_per_byte: Total NLL in bits / ``bytes``.
        documents: Documents with at least one scored token.
        nll: Total NLL (nats).
        doc_nll: Per document: total NLL (nats).
        doc_tokens: Per document: scored tokens.
    """

    loss: float
    perplexity: float
    tokens: int
    bytes: int
    bits_per_byte: float
    documents: int
    nll: float
    doc_nll: list[float]
    doc_tokens: list[int]

    def row(self) -> dict[str, Any]:
        """The JSON row fields (``llmforge eval --json``)."""
        keys = ("loss", "perplexity", "tokens", "bytes", "bits_per_byte", "documents")
        return {k: getattr(self, k) for k in keys}


# -- windows -----------------------------------------------------------------------------


def plan_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, end, first)`` of each window of a document of ``n_tokens`` tokens.

    Inputs are ``ids[start:end]`` (``end - start <= context``), the targets ``first .. end``
    are scored; the blocks of targets cover ``1 .. n_tokens - 1`` exactly once.

    Raises:
        ValueError: If not ``1 <= stride <= context``.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"need 1 <= stride <= context, got stride={stride}, context={context}")
    out, last = [], n_tokens - 1
    done = 0
    while done < last:
        e = min(done + (context if done == 0 else stride), last)
        out.append((max(0, e - context), e, done + 1))
        done = e
    return out


def build_windows(docs: Sequence[Document], context: int, stride: int) -> list[Window]:
    """Every window of every document that scores at least one token."""
    out = []
    for d, doc in enumerate(docs):
        for start, end, first in plan_windows(len(doc.ids), context, stride):
            if bool(doc.scored[first : end + 1].any()):
                out.append(Window(d, start, end, first))
    return out


def collate(
    docs: Sequence[Document], windows: Sequence[Window], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded inputs (B, T), targets (B, T) with -100 where nothing is scored, doc (B,).

    As in training (``data.samplers.ExampleSampler``): a causal model's real positions never
    attend to the padding after them and keep their position ids, so no attention mask is
    needed.
    """
    t = max(w.end - w.start for w in windows)
    x = torch.full((len(windows), t), pad_id, dtype=torch.long)
    y = torch.full((len(windows), t), IGNORE, dtype=torch.long)
    for r, w in enumerate(windows):
        doc, n = docs[w.doc], w.end - w.start
        x[r, :n] = doc.ids[w.start : w.end]
        tgt = doc.ids[w.start + 1 : w.end + 1]
        keep = doc.scored[w.start + 1 : w.end + 1].clone()
        keep[: w.first - w.start - 1] = False  # targets before the block: an earlier window's
        y[r, :n] = torch.where(keep, tgt, IGNORE)
    return x, y, torch.tensor([w.doc for w in windows], dtype=torch.long)


def batches_of(windows: Sequence[Window], batch_size: int) -> list[list[Window]]:
    """Windows in batches of ``batch_size``, longest first (little padding per batch)."""
    order = sorted(windows, key=lambda w: (w.start - w.end, w.doc, w.start))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# -- scoring -----------------------------------------------------------------------------


def adapter_scorer(adapter: Any, chunk: int | None = None) -> RowScorer:
    """A :data:`RowScorer` for an llmforge ``ModelAdapter`` (any architecture).

    A ``transformers`` model (LoRA or not) whose head is a plain ``hidden @ W.T``
    (``HFCausalLMAdapter.fused_parts``) runs its decoder body, then the LM head on the scored
    positions only (:func:`~llmforge.modeling.fused_loss.head_nll`): no logits for context
    positions, never all logits at once. Any other model (the custom Transformer, a head with
    a bias, soft-capping or LoRA) is scored from ``adapter.forward``'s logits.
    """
    find = getattr(adapter, "fused_parts", None)
    parts = find() if find is not None else None
    if parts is not None:
        body, weight = parts

        def fused(x: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            hidden = body(input_ids=x, use_cache=False).last_hidden_state  # (B, T, C)
            return head_nll(hidden[rows], weight, targets, chunk)  # (N,)

        return fused

    def score(x: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, _ = adapter.forward(x)  # (B, T, V)
        return F.cross_entropy(logits[rows].float(), targets, reduction="none")

    return score


@dataclass(frozen=True)
class ScoreOptions:
    """How to run the forwards.

    Attributes:
        context: Tokens per window (the model's context, or less).
        stride: New targets per window after the first (``<= context``); ``context`` = none
            overlapping.
        batch_size: Windows per forward.
        pad_id: Input id of padding positions (never scored, never attended to).
        device: Where the model is.
        autocast: A dtype to autocast the forwards to (``torch.bfloat16`` on a GPU), or None.
    """

    context: int
    stride: int
    batch_size: int = 8
    pad_id: int = 0
    device: str | torch.device = "cpu"
    autocast: torch.dtype | None = None


def score_documents(
    scorer: RowScorer, docs: Sequence[Document], opts: ScoreOptions, model: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total NLL (float64, nats) and scored tokens of each document: ``(D,)`` each.

    Args:
        scorer: Scores the selected positions of a batch (:func:`adapter_scorer`).
        docs: The documents.
        opts: Window and batch settings.
        model: Put in eval mode for the duration (its mode is restored), if given.
    """
    dev = torch.device(opts.device)
    nll = torch.zeros(len(docs), dtype=torch.float64, device=dev)
    count = torch.zeros(len(docs), dtype=torch.long, device=dev)
    was_training = bool(getattr(model, "training", False))
    if model is not None:
        model.eval()
    try:
        with torch.inference_mode():
            for batch in batches_of(
                build_windows(docs, opts.context, opts.stride), opts.batch_size
            ):
                x, y, doc = (t.to(dev) for t in collate(docs, batch, opts.pad_id))
                rows = y != IGNORE
                with _autocast(dev, opts.autocast):
                    token_nll = scorer(x, rows, y[rows])
                owner = doc[:, None].expand_as(y)[rows]
                nll.index_add_(0, owner, token_nll.double())
                count.index_add_(0, owner, torch.ones_like(owner))
    finally:
        if model is not None and was_training:
            model.train()
    return nll.cpu(), count.cpu()


def _autocast(dev: torch.device, dtype: torch.dtype | None) -> Any:
    return contextlib.nullcontext() if dtype is None else torch.autocast(dev.type, dtype)


def summarize(docs: Sequence[Document], nll: torch.Tensor, count: torch.Tensor) -> HeldoutResult:
    """The :class:`HeldoutResult` of per-document sums from :func:`score_documents`."""
    total, tokens = float(nll.sum()), int(count.sum())
    n_bytes = sum(d.n_bytes for d, c in zip(docs, count.tolist(), strict=True) if c)
    loss = total / tokens if tokens else math.nan
    return HeldoutResult(
        loss=loss,
        perplexity=_exp(loss),
        tokens=tokens,
        bytes=n_bytes,
        bits_per_byte=total / math.log(2) / n_bytes if n_bytes else math.nan,
        documents=int((count > 0).sum()),
        nll=total,
        doc_nll=nll.tolist(),
        doc_tokens=count.tolist(),
    )


def _exp(loss: float) -> float:
    if math.isnan(loss):
        return math.nan
    return math.exp(loss) if loss < 700 else math.inf


def heldout_loss(
    scorer: RowScorer, docs: Sequence[Document], opts: ScoreOptions, model: Any = None
) -> HeldoutResult:
    """Score ``docs`` and summarize: the one call ``llmforge eval --data`` makes."""
    nll, count = score_documents(scorer, docs, opts, model)
    return summarize(docs, nll, count)
