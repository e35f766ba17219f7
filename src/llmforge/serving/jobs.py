"""One request's generation: what the handler awaits (:class:`Job`) and what the scheduler
thread steps (:class:`Run`).

A run drives ``inference.generation.stream_ids`` (the sampler ``llmforge generate`` uses, with
its KV cache and stop tokens) through ``iter_text`` (the decoder ``generate`` prints with, so
the text is the same and a multi-byte character is never split), one piece of text per step.
Stop strings are cut by :class:`StopMatcher`, which holds back text that might be the start of
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from llmforge.adapters.base import ModelAdapter
from llmforge.inference.generation import SamplingOptions, iter_text, stream_ids

EventKind = Literal["text", "done", "error", "cancelled"]
_TERMINAL = ("done", "error", "cancelled")


@dataclass(frozen=True)
class Generation:
    """What to generate: prompt ids, sampling options (with the length), stop strings."""

    prompt_ids: list[int]
    options: SamplingOptions
    stop: tuple[str, ...] = ()
    post_interval: float = 0.0  # text is sent at most this often (seconds; inf: at the end)


@dataclass(frozen=True)
class Event:
    """What the scheduler tells a request: text, the end (with why), or an error."""

    kind: EventKind
    text: str = ""
    finish_reason: str | None = None
    error: BaseException | None = None


class Overloaded(Exception):
    """The model's queue is full.

    Attributes:
        retry_after: Seconds after which a place is likely free.
    """

    def __init__(self, model: str, waiting: int, retry_after: int) -> None:
        super().__init__(f"{model}: {waiting} requests are already waiting")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server stopped before the job ended."""


class StopMatcher:
    """Cuts the text at the first stop string; the stop string itself is never returned."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to send now, and whether a stop string was reached."""
        if not self._stops:
            return text, False
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return buf[: min(hits)], True
        keep = self._partial(buf)
        self._pending = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The held-back text (the generation ended without completing a stop string)."""
        rest, self._pending = self._pending, ""
        return rest

    def _partial(self, buf: str) -> int:
        """Length of the longest end of ``buf`` that begins some stop string."""
        for n in range(min(len(buf), max(len(s) for s in self._stops) - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0


class Job:
    """One request's generation, as its handler on the event loop sees it.

    Args:
        model: The served model's name.
        generation: What to generate.
        loop: The event loop of the handler (events are delivered on it).

    Attributes:
        completion_tokens: Tokens generated so far (the scheduler thread updates it).
        finish_reason: ``stop`` or ``length`` once done.
    """

    def __init__(self, model: str, generation: Generation, loop: asyncio.AbstractEventLoop) -> None:
        self.model = model
        self.generation = generation
        self.prompt_tokens = len(generation.prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()
        # Set by the scheduler when it queues the job: takes it out of the queue again.
        self.withdraw: Callable[[Job], None] | None = None
        self._ended = False

    @property
    def cancelled(self) -> bool:
        """Whether the handler gave up on this job (its client went away)."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop the job (call on the event loop; a no-op once it has ended)."""
        if self._ended or self._cancelled.is_set():
            return
        self._cancelled.set()
        if self.withdraw is not None:
            self.withdraw(self)
        self._events.put_nowait(Event("cancelled"))

    def post(self, event: Event) -> None:
        """Deliver ``event`` to the handler (call from the scheduler thread)."""
        if event.kind == "error":
            self.error = event.error
        # A closed loop means the server is gone and nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def events(self) -> AsyncIterator[Event]:
        """The job's events up to and including the terminal one.

        Text that piled up while the handler was busy sending comes as one event: a slow
        client then gets fewer, larger chunks instead of falling further behind.
        """
        while True:
            event = await self._events.get()
            if event.kind == "text":
                parts, following = [event.text], None
                while not self._events.empty():
                    following = self._events.get_nowait()
                    if following.kind != "text":
                        break
                    parts.append(following.text)
                    following = None
                yield Event("text", "".join(parts))
                if following is None:
                    continue
                event = following
            self._ended = event.kind in _TERMINAL
            yield event
            if self._ended:
                return


class Run:
    """A job the scheduler is generating (used on the scheduler thread only).

    Args:
        job: The job.
        adapter: Its model.
        interrupted: True when the run must stop before its next token (the job was cancelled
            or the server is stopping); checked between tokens, so a client that goes away
            frees the model at once even while ``iter_text`` holds back an incomplete
            character.
    """

    def __init__(self, job: Job, adapter: ModelAdapter, interrupted: Callable[[], bool]) -> None:
        gen = job.generation
        self.job = job
        self.started = time.perf_counter()
        self._max_new = gen.options.max_new_tokens
        self._interrupted = interrupted
        self._ids = stream_ids(adapter, gen.prompt_ids, gen.options)
        self._pieces = iter_text(adapter.tokenizer, self._counted())
        self._matcher = StopMatcher(gen.stop)
        self._stop_token = False
        self._interval = gen.post_interval
        self._unsent: list[str] = []
        self._last_post = -math.inf  # the first text goes out at once

    def _counted(self) -> Iterator[int]:
        # At most max_new ids, never asking for one more: after its last token, stream_ids
        # would run a forward pass for a token nobody uses.
        for _ in range(self._max_new):
            if self._interrupted():
                return
            try:
                token = next(self._ids)
            except StopIteration:  # a stop token: stream_ids never emits it
                self._stop_token = True
                return
            self.job.completion_tokens += 1
            yield token

    def step(self) -> bool:
        """Generate the next piece of text and post it; True when the job has ended."""
        try:
            piece = next(self._pieces)
        except StopIteration:
            if self._interrupted():  # the scheduler ends it: withdrawn, or shutting down
                self.close()
                return self.job.cancelled
            full = self.job.completion_tokens >= self._max_new and not self._stop_token
            return self._end("length" if full else "stop")
        text, hit = self._matcher.feed(piece)
        if hit:
            return self._emit_end(text, "stop")
        if text:
            self._send(text)
        return False

    def _send(self, text: str, *, now: bool = False) -> None:
        """Post ``text``, or keep it for the next post when the last was too recent.

        Each post wakes the event loop, which then builds, sends and (in the client) parses
        one chunk; at thousands of tokens a second that work competes with the model for
        the GIL and the cores. Batching by time bounds it while adding at most one interval
        of delay, and a slow model (tokens further apart than the interval) is unaffected.
        """
        self._unsent.append(text)
        t = time.perf_counter()
        if now or t - self._last_post >= self._interval:
            self.job.post(Event("text", "".join(self._unsent)))
            self._unsent.clear()
            self._last_post = t

    def _end(self, reason: str) -> bool:
        return self._emit_end(self._matcher.flush(), reason)

    def _emit_end(self, text: str, reason: str) -> bool:
        self.close()
        if self.job.cancelled:
            return True
        if text or self._unsent:
            self._send(text, now=True)
        self.job.finish_reason = reason
        self.job.post(Event("done", finish_reason=reason))
        return True

    def close(self) -> None:
        """Free the generator (stream_ids' ``finally`` restores the model's mode)."""
        self._pieces.close()
        self._ids.close()
