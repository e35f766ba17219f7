"""The from-scratch decoder-only Transformer (GPT-style, pre-norm, tied embeddings).

Shapes use B = batch, T = sequence length, C = d_model, H = heads, D = C // H, V = vocab.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmforge.modeling.dropout import ParallelDropout, dropout

# One (key, value) pair per layer, each (B, H, T_past, D).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TransformerConfig:
    """Size of the model.

    Attributes:
        vocab_size: Number of token ids.
        n_layers: Transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention heads (must divide ``d_model``).
        block_size: Longest sequence (learned positions).
        dropout: Dropout on attention output, MLP output and embeddings.
    """

    vocab_size: int
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    block_size: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # A config.json may be damaged or forged: a wrong type or an absurd size must be a
        # clear error here, not a crash (or a terabyte allocation) inside torch.
        limits = {
            "vocab_size": 1 << 24,
            "n_layers": 4096,
            "d_model": 1 << 17,
            "n_heads": 1 << 12,
            "block_size": 1 << 20,
        }
        for name, most in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= most:
                raise ValueError(f"{name} must be a whole number from 1 to {most:,}")
        if self.d_model % self.n_heads:
            raise ValueError("n_heads must divide d_model")
        dropout = self.dropout
        if not isinstance(dropout, int | float) or isinstance(dropout, bool):
            raise ValueError("dropout must be a number")
        if not 0 <= dropout < 1:
            raise ValueError("dropout must be at least 0 and below 1")

    def to_dict(self) -> dict:
        """Plain dict for ``config.json``."""
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout
        self.resid_drop = ParallelDropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, H, T, D)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, H, T_past + T, D)
            v = torch.cat((past[1], v), dim=2)
        p = self.dropout if self.training else 0.0
        if past is None and p > 0 and x.device.type == "cpu":
            y = _dropout_attention(q, k, v, p)
        elif past is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        elif T == 1:
            # One new token attends to everything before it: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            # Several new tokens after a cache: queries sit at the end of the keys, so the
            # causal mask is offset by the cached length.
            Tk = k.size(2)
            mask = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(Tk - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.resid_drop(self.proj(y)), (k, v)


def _dropout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """Causal attention with dropout on its weights, the mask drawn on every core.

    What ``scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)`` computes on a
    CPU (its flash kernel refuses dropout, so it takes this math path too), without its
    single-threaded mask and its ``_safe_softmax`` checks (no row is fully masked here: each
    query sees itself). q, k, v: (B, H, T, D); returns (B, H, T, D).
    """
    T = q.size(-2)
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)  # (T, T)
    # in place: nothing keeps the scores for backward (the product keeps q and k), and a
    # copy of a (B, H, T, T) tensor costs as much as the softmax
    weights = torch.softmax(scores.masked_fill_(future, float("-inf")), dim=-1)
    return dropout(weights, p, training=True) @ v  # (B, H, T, D)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> C with GELU."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=False)
        self.drop = ParallelDropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class Transformer(nn.Module):
    """Decoder-only Transformer language model with tied input/output embeddings.

    Args:
        cfg: The model's size.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = ParallelDropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        # Residual projections scaled down so the residual stream's variance stays ~1
        # however deep the model is (GPT-2's scheme).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, KVCache]:
        """Run the model.

        Args:
            idx: Token ids, (B, T).
            targets: Next-token ids, (B, T), ``-100`` where no loss is wanted; or None.
            past: The KV cache from earlier calls (generation), or None.

        Returns:
            ``(logits (B, T, V), mean loss or None, the new KV cache)``.
        """
        T = idx.size(1)
        offset = past[0][0].size(2) if past else 0
        if offset + T > self.cfg.block_size:
            raise ValueError(
                f"sequence of {offset + T} tokens exceeds block_size {self.cfg.block_size}"
            )
        pos = torch.arange(offset, offset + T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past[i] if past else None)
            new_cache.append(kv)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss, new_cache
