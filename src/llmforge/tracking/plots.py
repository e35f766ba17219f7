"""Loss curves: a matplotlib figure for ``runs plot``, a terminal plot for ``runs show``.

matplotlib runs on its Agg backend (no display needed, nothing of the user's configured
backend) with the figure object API, so nothing global (pyplot's current figure) leaks between
calls. The image is rendered in memory and written by ``fsutil.atomic_write_bytes`` (a
temporary file beside the target, renamed over it): a reader never sees half an image, and a
failure leaves an older image as it was.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.errors import ConfigError, LLMForgeError
from llmforge.fsutil import atomic_write_bytes, write_failure_reason
from llmforge.tracking.series import LABELS, Curve
from llmforge.untrusted import brief

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
X_AXES = {"step": "step", "tokens": "tokens seen", "time": "training time (s)"}
_DPI = 100
# Terminal markers, told apart without colours (a plot piped to a file or a log).
_MARKERS = ("*", "o", "+", "x", "#", "@")


@dataclass
class PlotRun:
    """One run to draw.

    Attributes:
        label: Its name in the legend.
        curves: Its metrics (:func:`llmforge.tracking.series.curves`).
        tokens_per_step: For ``--x tokens``.
    """

    label: str
    curves: dict[str, Curve]
    tokens_per_step: int | None = None


def parse_size(text: str) -> tuple[int, int]:
    """``1200x800`` as pixels ``(1200, 800)``.

    Raises:
        ConfigError: Not WIDTHxHEIGHT with each from 100 to 10000.
    """
    w, sep, h = text.lower().partition("x")
    if sep and w.isdigit() and h.isdigit() and 100 <= int(w) <= 10000 and 100 <= int(h) <= 10000:
        return int(w), int(h)
    raise ConfigError(
        f"--size {brief(text, 40)} is not WIDTHxHEIGHT in pixels.",
        "Give e.g. --size 1200x800 (each side from 100 to 10000).",
    )


def _check_output(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"Cannot tell the image format of {out.name!r} from its name.",
            "End the file name with .png, .svg or .pdf.",
        )
    if not out.parent.is_dir():
        raise ConfigError(f"The folder {out.parent} does not exist.", "Create it first.")
    if out.is_dir():
        raise ConfigError(f"{out} is a folder.", "Give -o the name of an image file to write.")
    return fmt


def _title(metrics: list[str], runs: list[PlotRun]) -> str:
    what = " and ".join(LABELS.get(m, m) for m in metrics)
    names = ", ".join(r.label for r in runs[:3]) + (f" (+{len(runs) - 3})" if len(runs) > 3 else "")
    return f"{what[:1].upper()}{what[1:]}: {names}"


def _y_label(metrics: list[str]) -> str:
    if len(metrics) == 1:
        return LABELS.get(metrics[0], metrics[0])
    return "loss" if set(metrics) <= {"loss", "val_loss"} else "value"


def figure(
    runs: list[PlotRun],
    metrics: list[str],
    out: Path,
    *,
    x: str = "step",
    log_y: bool = False,
    size: tuple[int, int] = (1000, 600),
) -> list[str]:
    """Draw ``metrics`` of ``runs`` into ``out`` (.png, .svg or .pdf), atomically.

    One colour per run, one line style per metric. Returns notes about what was not drawn
    (a run without that metric).

    Raises:
        ConfigError: Unknown format or axis, a missing folder, or nothing to draw at all.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LLMForgeError(
            "`runs plot` draws with matplotlib, which is not installed (an optional dependency).",
            "Install it: pip install matplotlib (or llmforge[plots]).",
        ) from None
    from matplotlib.figure import Figure  # the Agg canvas: no display, no global state

    fmt = _check_output(out)
    if x not in X_AXES:
        raise ConfigError(f"--x {brief(x, 20)} is not an axis.", "Use step, tokens or time.")
    fig = Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    styles = ("-", "--", ":", "-.")
    notes, drawn = [], 0
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for j, metric in enumerate(metrics):
            curve = run.curves.get(metric)
            if curve is None or not curve.steps:
                notes.append(f"{run.label} has no {metric} records; not drawn.")
                continue
            xs = curve.xs(x, run.tokens_per_step)
            label = run.label if len(metrics) == 1 else f"{run.label}: {LABELS.get(metric, metric)}"
            marker = "o" if len(curve.steps) < 30 else None  # sparse curves (validation) as dots
            ax.plot(xs, curve.values, styles[j % 4], color=color, label=label, marker=marker, ms=3)
            drawn += 1
    if drawn == 0:
        raise ConfigError(
            f"None of the runs has {' or '.join(metrics)} records to plot.",
            "Choose another --metric (loss, val_loss, lr, grad_norm, tokens_per_s, val_ppl).",
        )
    ax.set_title(_title(metrics, runs))
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(_y_label(metrics))
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    _save_atomically(fig, out, fmt)
    return notes


def _save_atomically(fig: Any, out: Path, fmt: str) -> None:
    """Render the figure in memory, then write it through the one atomic writer."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=_DPI)
    try:
        atomic_write_bytes(out, buffer.getvalue())
    except OSError as e:
        raise ConfigError(
            f"Could not write the image {out}: {write_failure_reason(e)}. Nothing was written.",
            "Give -o a file in a folder you can write to.",
        ) from e


def terminal_plot(
    curves: dict[str, Curve],
    metrics: tuple[str, ...] = ("loss", "val_loss"),
    *,
    width: int = 80,
    height: int = 18,
    color: bool = False,
) -> str | None:
    """``metrics`` against step as text at most ``width`` columns wide, or None if there is
    nothing to draw (or plotext is not installed).

    Without ``color`` the text has no escape sequences and each metric its own marker
    (named in the title), so it reads the same in a log file.
    """
    try:
        import plotext
    except ImportError:  # optional: `runs show` then prints no plot
        return None
    shown = [(m, curves[m]) for m in metrics if m in curves and curves[m].steps]
    if not shown:
        return None
    fig = plotext.figure
    fig.clear()
    fig.plot_size(max(40, min(width, 200)), max(8, height))
    keys = []
    # at most six metrics get a marker each; more are not drawn
    for (name, curve), marker in zip(shown, _MARKERS, strict=False):
        pairs = zip(curve.steps, curve.values, strict=True)
        points = [(s, v) for s, v in pairs if math.isfinite(v)]
        if not points:
            continue
        sig = fig.signal([p[0] for p in points], [p[1] for p in points], marker=marker)
        fig.draw(sig.label(LABELS.get(name, name)) if color else sig)
        keys.append(f"{marker} {LABELS.get(name, name)}")
    if not keys:
        return None
    fig.title("  ".join(keys) if not color else "loss")
    fig.label("step", axis="x")
    text = fig.build().string(colorless=not color)
    fig.clear()
    return text
