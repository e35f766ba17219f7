"""Folders of lm-eval task YAML files: llmforge's own, and the user's ``--include-path``.

lm-eval *executes code* named in a task YAML: ``!function utils.process_docs`` imports
``utils.py`` next to the YAML, and a reference that is not a file there falls back to any
importable module (``!function os.system`` would be called on the task's documents). Its
loader also follows ``include:`` to any path. So a folder passed with ``--include-path`` is
vetted before lm-eval reads it, with llmforge's bounded YAML loader:

- every ``*.yaml`` file (what lm-eval indexes) must be a bounded, plain YAML mapping: no
  alias bombs, no ``!!python/...`` tags; the one custom tag is ``!function``;
- a ``!function`` must name a ``.py`` file inside the folder (never an installed module);
- an ``include:`` must name a YAML file inside the folder;
- no file may lead outside the folder through a symbolic link;
- no task may take the name of llmforge's own ``llmforge-smoke``.

The code of the folder's own ``.py`` files still runs when its tasks are evaluated: that is
what ``--include-path`` is for, and docs/eval.md says so. Nothing is read from a folder that
was not given explicitly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from llmforge.errors import EvalError
from llmforge.untrusted import UntrustedYAMLError, _BoundedLoader, brief

PACKAGE_TASKS = Path(__file__).resolve().parent / "tasks"
SMOKE_TASK = "llmforge-smoke"
MAX_TASK_FILES = 2000
MAX_TASK_FILE_BYTES = 1 << 20
_HINT = (
    "--include-path runs the code its task files name; point it at a folder of your own lm-eval "
    "task YAML files (docs/eval.md, 'Local tasks')."
)


class _FunctionRef(str):
    """The scalar of a ``!function`` tag, kept as text (nothing is imported)."""


class _TaskYAMLLoader(_BoundedLoader):
    """The bounded safe loader, plus lm-eval's ``!function`` tag as a plain string."""


_TaskYAMLLoader.add_constructor(
    "!function", lambda loader, node: _FunctionRef(loader.construct_scalar(node))
)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _refs(value: Any) -> list[_FunctionRef]:
    if isinstance(value, _FunctionRef):
        return [value]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _load_task_yaml(path: Path, shown: str) -> dict[str, Any]:
    """One task file through the bounded loader; every refusal is one EvalError."""
    if path.stat().st_size > MAX_TASK_FILE_BYTES:
        raise EvalError(f"The task file {shown} is larger than 1 MiB.", _HINT)
    try:
        text = path.read_text(encoding="utf-8")
        loader = _TaskYAMLLoader(text)
        try:
            cfg = loader.get_single_data()
        finally:
            loader.dispose()
    except (UnicodeDecodeError, OSError) as e:
        raise EvalError(f"The task file {shown} cannot be read as UTF-8 text ({e}).", _HINT) from e
    except (UntrustedYAMLError, RecursionError) as e:
        raise EvalError(f"The task file {shown} was refused: {e}.", _HINT) from e
    except yaml.YAMLError as e:
        why = brief(str(e).splitlines()[0] if str(e) else type(e).__name__, 160)
        raise EvalError(
            f"The task file {shown} is not plain YAML ({why}); only the !function tag is allowed.",
            _HINT,
        ) from e
    if not isinstance(cfg, dict):
        raise EvalError(f"The task file {shown} does not hold a YAML mapping.", _HINT)
    return cfg


def _check_task_file(path: Path, root: Path, shown: str) -> None:
    cfg = _load_task_yaml(path, shown)
    for ref in _refs(cfg):
        module, _, fn = ref.rpartition(".")
        target = (path.parent / f"{module.replace('.', '/')}.py").resolve()
        if not module or not fn or not target.is_file() or not _inside(target, root):
            raise EvalError(
                f"The task file {shown} names the function {brief(str(ref), 80)}, which is not "
                "a .py file in the --include-path folder; lm-eval would import it from anywhere "
                "on the system.",
                _HINT,
            )
    includes = cfg.get("include")
    for inc in includes if isinstance(includes, list) else [includes] if includes else []:
        target = (path.parent / str(inc)).resolve()
        if not _inside(target, root) or not target.is_file():
            raise EvalError(
                f"The task file {shown} includes {brief(str(inc), 80)}, which is not a file in "
                "the --include-path folder.",
                _HINT,
            )
    names = cfg.get("task"), cfg.get("group")
    if SMOKE_TASK in names:
        raise EvalError(
            f"The task file {shown} defines {SMOKE_TASK!r}, llmforge's own task.",
            "Give your task another name.",
        )


def check_include_path(given: str | Path) -> Path:
    """Vet one ``--include-path`` folder (see the module docstring); return it resolved.

    Raises:
        EvalError: If it is not a folder, or a file in it is refused.
    """
    folder = Path(given).expanduser()
    if not folder.is_dir():
        raise EvalError(
            f"--include-path {brief(str(given), 160)} is not a folder.",
            "Point it at a folder of lm-eval task YAML files.",
        )
    root = folder.resolve()
    entries = sorted(root.rglob("*"))
    if len(entries) > MAX_TASK_FILES:
        raise EvalError(
            f"--include-path {root} holds more than {MAX_TASK_FILES} files.",
            "Point it at the folder of the tasks you want to run.",
        )
    for p in entries:
        shown = str(p.relative_to(root))
        if not _inside(p.resolve(), root):
            raise EvalError(
                f"{shown} in --include-path {root} is a link to outside the folder.", _HINT
            )
        if p.suffix == ".yaml" and p.is_file() and "__pycache__" not in p.parts:
            _check_task_file(p, root, shown)
    return root


def task_folder_files(yaml_path: Path) -> dict[str, str]:
    """``{name: sha256}`` of every file in a task YAML's folder (YAML, loader, data)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(yaml_path.parent.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix != ".pyc"
    }
