"""The lm-evaluation-harness bridge: harness tasks on a model llmforge has already loaded.

``lm_eval.simple_evaluate`` runs on an ``HFLM`` built around the loaded ``transformers``
model object (a ``peft`` LoRA model stays unmerged), so nothing is exported to disk. The
numbers are lm-eval's own: the same object code path that ``lm_eval --model hf`` takes once
its ``HFLM`` has loaded the model from a folder.

What ``HFLM(pretrained=<object>)`` needs from the object (``lm_eval/models/huggingface.py``):
``.config`` (``model_type`` picks the causal backend; ``max_position_embeddings`` is the
context), ``.device`` (inputs are put there: move the model first, ``device=`` is ignored
for objects, and so is ``dtype=``), ``.eval()`` and ``.tie_weights()`` (called on it),
``__call__(input_ids).logits``, ``.generate`` for generation tasks. The tokenizer must be a
``transformers`` tokenizer object (llmforge's ``HFTokenizer.hf``); HFLM gives it a pad token
if it has none (it mutates it).

Offline: the model is an object, so lm-eval never looks it up on the hub (with a *string*
``pretrained`` it would call ``HfApi().model_info``); llmforge's task reads its data from the
package; ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` are honoured as the user set them (they
are read when ``huggingface_hub`` / ``datasets`` are imported).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from llmforge.errors import EvalError
from llmforge.evaluation.task_folders import PACKAGE_TASKS, check_include_path, task_folder_files
from llmforge.untrusted import brief

BOOTSTRAP_ITERS = 1000
NOISY_LOGGERS = ("lm_eval", "datasets", "evaluate", "accelerate", "transformers", "peft")


@dataclass(frozen=True)
class TaskResult:
    """One harness task's outcome, as recorded and shown.

    Attributes:
        task: The task name.
        metrics: ``{"acc": 0.62, "acc_stderr": 0.18, ...}`` (filter ``none`` only).
        samples: Documents evaluated (lm-eval's ``n-samples.effective``, after ``limit``).
        samples_total: Documents in the task's split (``n-samples.original``).
        num_fewshot: Few-shot examples per prompt.
        version: The task's ``metadata.version``.
    """

    task: str
    metrics: dict[str, float]
    samples: int
    samples_total: int
    num_fewshot: int | None
    version: Any = None
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def require_lm_eval() -> Any:
    """Import ``lm_eval``, or raise the one-paragraph error naming the extra to install."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (needs accelerate, ...)
    except ImportError as e:
        raise EvalError(
            f"--tasks needs lm-evaluation-harness, which is not installed ({e.name or e}).",
            "pip install 'llmforge[eval]' (it installs lm-eval), then run the command again.",
        ) from e
    return lm_eval


# -- quiet ---------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_harness(verbose: bool = False) -> Iterator[io.StringIO]:
    """Silence lm-eval, ``datasets`` and ``transformers`` for the duration.

    Their loggers go to ERROR; tqdm bars (lm-eval's request bars, ``datasets``' split
    generation) and stray ``print`` calls (``batch_size=auto``) go to a buffer instead of
    stderr/stdout, so ``--json`` output stays clean; lm-eval's ``git describe`` (which prints
    "fatal: not a git repository" from a subprocess) is skipped. The buffer is yielded so a
    failure can show its tail. ``verbose`` leaves everything as it is.
    """
    buffer = io.StringIO()
    if verbose:
        yield buffer
        return
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
            mock.patch("lm_eval.evaluator.get_git_commit_hash", return_value=None),
        ):
            yield buffer
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# -- tasks ---------------------------------------------------------------------------------


def task_manager(tasks: Sequence[str], include_path: Sequence[str | Path] = ()) -> Any:
    """A ``TaskManager`` that knows ``tasks``: llmforge's own, ``include_path``'s, lm-eval's.

    lm-eval's ~15,000 built-in tasks take seconds to index, so they are indexed only when a
    task is not found in the package's and the user's folders.

    Raises:
        EvalError: If an include path is not a folder, or a task is found nowhere.
    """
    from lm_eval.tasks import TaskManager

    paths = [PACKAGE_TASKS, *(check_include_path(p) for p in include_path)]
    include = [str(p) for p in paths]
    manager = TaskManager(include_path=include, include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        known = manager.all_tasks
        close = sorted({c for t in missing for c in difflib.get_close_matches(t, known)})
        near = f" Close names: {', '.join(close)}." if close else ""
        raise EvalError(
            f"No lm-eval task is named {', '.join(brief(t, 80) for t in missing)}.{near}",
            "`lm-eval ls tasks` lists lm-eval's tasks; local YAML tasks need --include-path DIR.",
        )
    return manager


# -- running -------------------------------------------------------------------------------


def make_lm(model: Any, tokenizer: Any, batch_size: int = 8, max_length: int | None = None) -> Any:
    """``HFLM`` around a loaded model object (already on its device) and its HF tokenizer.

    Args:
        model: A ``transformers`` causal LM or a ``peft`` model of one (unmerged LoRA).
        tokenizer: Its ``transformers`` tokenizer (llmforge: ``adapter.tokenizer.hf``).
        batch_size: Requests per forward.
        max_length: Context for lm-eval's truncation; None: the model config's.
    """
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    return HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        device=device,
        max_length=max_length,
    )


@dataclass(frozen=True)
class HarnessOptions:
    """``llmforge eval --tasks`` settings.

    Attributes:
        tasks: Task names.
        include_path: Folders of local YAML tasks.
        limit: Documents per task (None: all).
        num_fewshot: Few-shot examples (None: each task's default).
        seed: Seeds Python's, NumPy's and torch's RNGs and the few-shot sampler.
        batch_size: Requests per forward.
        verbose: Let lm-eval log and draw progress bars.
    """

    tasks: tuple[str, ...]
    include_path: tuple[str, ...] = ()
    limit: int | None = None
    num_fewshot: int | None = None
    seed: int = 1234
    batch_size: int = 8
    verbose: bool = False


def evaluate(
    lm: Any, opts: HarnessOptions, model_args: str | None = None, manager: Any = None
) -> dict[str, Any]:
    """Run ``lm_eval.simple_evaluate``; ``lm`` is an ``HFLM`` or a model name (``"hf"``).

    ``model_args`` goes with a model name (``pretrained=FOLDER``): how the check compares the
    bridge with lm-eval's own loading of the HF export.

    Raises:
        EvalError: If lm-eval is missing, a task is unknown, or the evaluation fails.
    """
    lm_eval = require_lm_eval()
    with quiet_harness(opts.verbose) as log:
        manager = manager or task_manager(opts.tasks, opts.include_path)
        try:
            return lm_eval.simple_evaluate(
                model=lm,
                model_args=model_args,
                tasks=list(opts.tasks),
                num_fewshot=opts.num_fewshot,
                batch_size=opts.batch_size,
                limit=opts.limit,
                task_manager=manager,
                random_seed=opts.seed,
                numpy_random_seed=opts.seed,
                torch_random_seed=opts.seed,
                fewshot_random_seed=opts.seed,
                # 0 would drop every stderr; mean metrics (acc) use the closed form anyway,
                # only bootstrappable ones (perplexity, bleu) resample, in a process pool.
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=True,
            )
        except Exception as e:  # a task's loader, template or metric failed
            tail = brief(" ".join(log.getvalue().split()[-40:]), 400)
            raise EvalError(
                f"lm-eval could not run {', '.join(opts.tasks)}: {type(e).__name__}: "
                f"{brief(str(e), 300)}.",
                f"Its last output: {tail}" if tail else "Run with --verbose to see lm-eval's log.",
            ) from e


def task_results(out: dict[str, Any], manager: Any = None) -> list[TaskResult]:
    """The results worth keeping from ``simple_evaluate``'s dict, one per task.

    With the ``manager`` that ran them, each result carries its :func:`task_source`.
    """
    rows = []
    for task, res in out["results"].items():
        metrics = _metrics(res)
        counts = out.get("n-samples", {}).get(task, {})
        rows.append(
            TaskResult(
                task=task,
                metrics=metrics,
                samples=int(counts.get("effective", res.get("sample_len", 0))),
                samples_total=int(counts.get("original", 0)),
                num_fewshot=out.get("n-shot", {}).get(task),
                version=out.get("versions", {}).get(task),
                higher_is_better=dict(out.get("higher_is_better", {}).get(task, {})),
                source=task_source(manager, task, out["configs"].get(task, {})) if manager else {},
            )
        )
    return rows


def _metrics(res: dict[str, Any]) -> dict[str, float]:
    """``{"acc": .., "acc_stderr": ..}`` from lm-eval's ``{"acc,none": .., ...}``.

    Every numeric ``metric,filter`` value is kept; a filter other than ``none`` (gsm8k's
    ``strict-match``) stays in the name (``exact_match,strict-match``). A stderr lm-eval did not
    compute is ``"N/A"`` there and left out here.
    """
    out = {}
    for key, value in res.items():
        metric, sep, filt = key.partition(",")
        if sep and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[metric if filt == "none" else key] = float(value)
    return out


def task_source(manager: Any, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """Where a task's data came from, for its record.

    A task defined by a YAML outside lm-eval (llmforge's own, ``--include-path``) records the
    sha256 of every file in its YAML's folder (the YAML, its data, its ``!function`` code);
    a hub-backed task records ``dataset_path``/``dataset_name`` and the pinned ``revision``
    of its ``dataset_kwargs`` (None when it follows the hub's main branch).
    """
    import lm_eval

    entry = manager.task_index.get(task)
    yaml_path = Path(entry.yaml_path).resolve() if entry and entry.yaml_path else None
    kwargs = config.get("dataset_kwargs") or {}
    out: dict[str, Any] = {
        "task": task,
        "dataset_path": config.get("dataset_path"),
        "dataset_name": config.get("dataset_name"),
        "revision": kwargs.get("revision"),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }
    builtin = Path(lm_eval.__file__).resolve().parent / "tasks"
    if yaml_path is not None and builtin not in yaml_path.parents:
        out["yaml"] = str(yaml_path)
        out["files"] = task_folder_files(yaml_path)
    return out


def run_tasks(
    model: Any, tokenizer: Any, opts: HarnessOptions, manager: Any = None
) -> list[TaskResult]:
    """Harness tasks on a loaded model: the one call ``llmforge eval --tasks`` makes.

    Args:
        model: A ``transformers`` causal LM (or a ``peft`` model of one), on its device.
        tokenizer: Its ``transformers`` tokenizer.
        opts: The tasks and settings.
        manager: The ``TaskManager`` from :func:`task_manager` (None: built here).

    Raises:
        EvalError: If lm-eval is missing, a task is unknown, or the evaluation fails.
    """
    require_lm_eval()
    with quiet_harness(opts.verbose):
        manager = manager or task_manager(opts.tasks, opts.include_path)
        lm = make_lm(model, tokenizer, opts.batch_size)
    return task_results(evaluate(lm, opts, manager=manager), manager)
