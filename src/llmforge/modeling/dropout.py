"""Dropout whose masks are drawn on every core of a CPU.

PyTorch draws a CPU dropout mask with ``bernoulli_`` on one thread: the default generator
is a single Mersenne Twister stream, and ATen takes a parallel path only through MKL on
Intel CPUs. At nanoGPT's shakespeare-char shape (dropout 0.2, micro-batch 16 x 256) the
19 masks of a step (the embeddings, and per layer the attention weights, the attention
output and the MLP output) took 23% of the step on a 2-core AMD CPU, with the second core
idle (``benchmarks/bench_nanogpt.py``; benchmarks/README.md).

:func:`dropout_noise` splits a mask into fixed chunks of ``CHUNK`` elements, each filled with
uniform draws from its own generator (a serial kernel like ``bernoulli_``, but 2.5x as fast
here), seeded by one draw from the default generator, and keeps the elements whose draw is
below ``1 - p``. The chunks are filled in parallel (ATen ops release the GIL), yet the mask
depends only on the default generator's state, never on the number of threads or on which
thread ran a chunk: a run is reproducible from its seed and resumes exactly from its saved
RNG state, as with ``torch.nn.Dropout`` (whose masks these are not: the streams differ).
Each element is kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``, as
``torch.nn.Dropout`` does. On other devices :class:`ParallelDropout` is ``F.dropout``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

# Elements per chunk, each with its own generator. Small enough that a mask of a
# (16, 256, 384) activation splits over several threads; large enough that seeding a
# generator (624 words) is noise beside filling its chunk.
CHUNK = 1 << 18

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None  # (pid, threads) the pool was made for


def _executor(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` workers for this process (a forked child gets its own: the
    parent's threads do not exist in it, and a task queued to them would never run)."""
    global _pool, _pool_key
    key = (os.getpid(), threads)
    if _pool is None or _pool_key != key:
        if _pool is not None and _pool_key is not None and _pool_key[0] == key[0]:
            _pool.shutdown(wait=False)  # another thread count: this process's old workers go
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="llmforge-dropout")
        _pool_key = key
    return _pool


def dropout_noise(like: torch.Tensor, p: float) -> torch.Tensor:
    """What dropout multiplies ``like`` by: ``1 / (1 - p)`` with probability ``1 - p``, else 0.

    Args:
        like: A CPU tensor; the noise has its shape and dtype.
        p: The probability of dropping an element, in [0, 1).

    Returns:
        The noise, a new tensor shaped like ``like``.
    """
    keep = 1.0 - p
    # uniform draws in fp32 (24 random bits each: P(u < keep) is keep to within 6e-8; in
    # bf16 the draws would be rounded to 8 bits), filled chunk by chunk in parallel
    draws = torch.empty(like.shape, dtype=torch.float32, device=like.device)
    flat = draws.view(-1)  # (N,)
    chunks = -(-flat.numel() // CHUNK)
    # one draw from the default generator seeds every chunk: the mask is a function of its state
    seeds = torch.randint(0, 2**62, (chunks,)).tolist()

    threads = min(torch.get_num_threads(), chunks)

    def fill(first: int) -> None:  # chunks first, first + threads, ...
        for i in range(first, chunks, threads):
            gen = torch.Generator()
            gen.manual_seed(seeds[i])
            # a serial kernel like bernoulli_, but 2.5x as fast here (6.3M draws: 17 vs 42 ms)
            flat[i * CHUNK : (i + 1) * CHUNK].uniform_(generator=gen)

    # the calling thread fills its share too: one thread fewer to wake and wait for
    helpers = [_executor(threads - 1).submit(fill, t) for t in range(1, threads)]
    fill(0)
    for done in helpers:
        done.result()
    # on this thread: these two are parallel kernels themselves
    noise = draws.lt_(keep) if like.dtype == torch.float32 else draws.lt_(keep).to(like.dtype)
    return noise.div_(keep)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the mask drawn in parallel on a CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return x * dropout_noise(x, p)


class ParallelDropout(nn.Module):
    """``nn.Dropout(p)`` with its CPU masks drawn on every core (see :func:`dropout_noise`).

    Args:
        p: The probability of dropping an element, in [0, 1).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
