"""TensorBoard: event files under ``runs/RUN/tensorboard/``, exact across resumes and kills.

A killed run may have written steps past its last checkpoint; the resumed run computes those
steps again (with other values: dropout, data order after a change of world size...). Two
readers of event files deal with that differently, and both must show each step once, with
the value of the run that survived:

- TensorBoard's Python loader (``EventAccumulator``, ``--load_fast=false``) purges every event
  at or past the step of a ``SessionLog.START`` event. ``SummaryWriter(purge_step=N)`` writes
  one at the head of the new event file.
- The Rust data server (``--load_fast=auto``, the default where ``tensorboard-data-server`` is
  installed) ignores ``SessionLog``; its reservoirs drop the points of one *tag* at or past a
  step that goes back. A tag the resumed run writes later than the dead run did (a different
  ``eval_interval``) or never again (the run is stopped before) would keep stale points.

So on resume the reporter does what ``metrics.jsonl`` does: it rewrites the event files that
hold anything past the resumed step without those events (atomically, one file at a time,
keeping names so the files' order is unchanged), then opens a new file with the purge marker
for readers that were already watching. Each segment writes its own file; TensorBoard reads a
run's files in name order, which is creation time in seconds, so a segment that would start in
the same second as the previous file waits for the next second.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmforge.tracking.reporter import Reporter, RunInfo

TB_DIR = "tensorboard"
_EVENTS_RE = re.compile(r"events\.out\.tfevents\.(\d+)\.")
# Summaries written once per segment at its start step: a second segment starting at the
# same step (a run killed again before its next checkpoint) replaces them.
_HEADER_TAGS = ("_hparams_/", "config")
# Longest wait for the clock to pass the newest event file's second.
_MAX_CLOCK_WAIT_S = 2.0


def event_files(logdir: Path) -> list[Path]:
    """The event files of a TensorBoard run folder, in the order TensorBoard reads them."""
    if not logdir.is_dir():
        return []
    return sorted(p for p in logdir.iterdir() if p.is_file() and _EVENTS_RE.match(p.name))


def _keep(event: Any, after_step: int) -> bool:
    """Whether an event survives a resume at ``after_step``."""
    if event.HasField("file_version"):
        return True
    if event.HasField("summary") and any(
        v.tag.startswith(_HEADER_TAGS) for v in event.summary.value
    ):
        return event.step < after_step
    return event.step <= after_step


def _records(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """``(start, stop, payload)`` of each complete record of an event file (TFRecord
    framing: length, its CRC, payload, its CRC), in order.

    Stops at a record cut short by a kill. The CRCs are not checked: tensorboard's own reader
    computes them in pure Python (5 s for a 5 MB file here), and a torn tail, the one damage a
    kill causes, is caught by the lengths alone.
    """
    pos, end = 0, len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack_from("<Q", data, pos)
        stop = pos + 12 + length + 4
        if stop > end:
            return
        yield pos, stop, data[pos + 12 : pos + 12 + length]
        pos = stop


def truncate_events(logdir: Path, after_step: int) -> int:
    """Drop every event past ``after_step`` from the event files; return how many went.

    A file is rewritten only if it changes (also when its last record was cut short by a
    kill): to a temporary file beside it, fsynced, then renamed over it.
    """
    from tensorboard.compat.proto.event_pb2 import Event

    dropped = 0
    for path in event_files(logdir):
        data = path.read_bytes()
        spans, gone, whole = [], 0, 0
        for start, stop, raw in _records(data):
            whole = stop
            if _keep(Event.FromString(raw), after_step):
                spans.append((start, stop))  # kept records are copied as they are, CRCs too
            else:
                gone += 1
        if gone == 0 and whole == len(data):
            continue
        kept = b"".join(data[a:b] for a, b in spans)
        dropped += gone
        # not "tfevents" in the name: TensorBoard would take the temporary file for a new one
        tmp = path.with_name(f".truncating-{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


def _after_newest_second(logdir: Path) -> None:
    """Wait (at most ~2 s) until a new event file's name sorts after every existing one."""
    stamps = [int(m.group(1)) for p in event_files(logdir) if (m := _EVENTS_RE.match(p.name))]
    deadline = time.monotonic() + _MAX_CLOCK_WAIT_S
    while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)


def _as_markdown_code(text: str) -> str:
    # Indented lines are a code block in TensorBoard's markdown, whatever the text holds
    # (a sample can contain ``` itself).
    return "\n".join("    " + line for line in text.splitlines()) or "    "


class TensorBoardReporter(Reporter):
    """Scalars, hparams and samples in ``runs/RUN/tensorboard/`` (``tensorboard --logdir runs``).

    Events are flushed at every log and checkpoint, so a live TensorBoard follows the run and
    a kill loses at most the record being written.
    """

    name = "tensorboard"
    live = True

    def __init__(self) -> None:
        self.writer: Any = None
        self.logdir: Path | None = None

    def start(self, run: RunInfo, hparams: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.logdir = run.run_dir / TB_DIR
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.fresh = not event_files(self.logdir)
        truncate_events(self.logdir, run.start_step)
        _after_newest_second(self.logdir)
        # purge_step: readers already watching drop what the killed segment wrote past it.
        self.writer = SummaryWriter(
            str(self.logdir), purge_step=run.start_step + 1, max_queue=1000, flush_secs=30
        )
        # hparams in this run's own folder (add_hparams would make a sub-run per call), tied to
        # the metrics the HParams dashboard shows beside them.
        metrics = {"train/loss": None, "val/loss": None}
        fw = self.writer._get_file_writer()
        for summary in hparams_summary(hparams, metrics):
            fw.add_summary(summary, run.start_step)
        self.writer.add_text("config", _config_markdown(hparams), run.start_step)
        self.writer.flush()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, _as_markdown_code(text), step)
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self, outcome: str | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _config_markdown(hparams: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in hparams.items())
    return "| key | value |\n|---|---|\n" + rows


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` as TensorBoard's Python loader shows them (all points)."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}


def raw_scalar_points(logdir: Path) -> list[tuple[str, int, float]]:
    """Every scalar point in the event files, in read order, with no reader's purging.

    What is left here is what any reader (the Rust data server, third-party parsers) sees.
    """
    from tensorboard.compat.proto.event_pb2 import Event

    out = []
    for path in event_files(logdir):
        for _, _, raw in _records(path.read_bytes()):
            event = Event.FromString(raw)
            for v in event.summary.value if event.HasField("summary") else ():
                if v.HasField("simple_value"):
                    out.append((v.tag, event.step, v.simple_value))
    return out
