"""The source tree is the architecture: these tests keep it so.

Every import of ``src/llmforge`` (function-level imports included: they hide cycles just as
well) is read from the AST. A module belongs to a wing (its subpackage) or to the ground (the
flat modules at the top); every wing has a layer, and an import may only point to the same
wing or to a lower layer. Why this order:

- ``cli`` (and ``__main__``) sit on top: commands parse, call one library function, render.
- ``serving`` and ``evaluation`` drive models for a command and build on ``inference``;
  ``inspecting`` (``llmforge runs``) reads what training leaves (checkpoints, metrics, the
  run's lock), so it sits over ``training``.
- ``training`` and ``exporting`` produce runs and folders; training samples through
  ``inference`` (the samples in its log), so inference sits below it.
- ``inference`` reads checkpoints and models; ``checkpoints`` know the runs' files and reach
  the model through ``adapters``; ``data`` renders chat templates with an adapter's tokenizer
  and reads hub datasets through ``importing``'s hub access (revision checks, offline mode),
  so ``importing`` (which needs only ``store`` and ``adapters``) sits below it; ``adapters``
  build ``modeling`` classes from ``store`` entries and ``config``; ``tracking`` only writes
  what the trainer reports.
- The ground (errors, fsutil, workspace, device, untrusted) imports no wing.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "llmforge"
DOC = ROOT / "docs" / "architecture.md"

LAYERS = {
    "__main__": 9,
    "cli": 8,
    "serving": 7,
    "evaluation": 7,
    "inspecting": 7,
    "training": 6,
    "exporting": 6,
    "inference": 5,
    "importing": 2.5,  # below data: hub datasets reuse its hub access (revision, errors, offline)
    "checkpoints": 4,
    "data": 3,
    "adapters": 2,
    "tracking": 1,
    "store": 1,
    "modeling": 1,
    "config": 1,
    "ground": 0,
}
GROUND = {"__init__", "device", "errors", "fsutil", "untrusted", "workspace"}
MAX_FLAT_MODULES = 8
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """``llmforge.x.y`` -> its file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imported(module: str, path: Path) -> set[str]:
    """The llmforge modules ``module`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # ``from pkg import module`` imports the module; ``from pkg import name`` the package.
            subs = [f"{base}.{alias.name}" for alias in node.names]
            names = [s for s in subs if s in MODULES]
            if len(names) < len(subs):
                names.append(base)
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("llmforge") and name != module and name != "llmforge":
                targets.add(name)
    return targets


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def wing_of(module: str) -> str:
    """The wing a module lives in: its subpackage, or ``ground`` for a flat module."""
    parts = module.split(".")
    if len(parts) == 1:
        return "ground"
    if len(parts) == 2 and parts[1] in GROUND:
        return "ground"
    return parts[1]


def test_every_module_has_a_layer() -> None:
    unknown = sorted({wing_of(m) for m in MODULES} - set(LAYERS))
    assert not unknown, f"wings without a layer in LAYERS: {unknown}"


def test_no_import_points_up() -> None:
    upward = [
        f"{a} ({wing_of(a)}) -> {b} ({wing_of(b)})"
        for a, targets in GRAPH.items()
        for b in targets
        if wing_of(a) != wing_of(b) and LAYERS[wing_of(b)] >= LAYERS[wing_of(a)]
    ]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert not _cycles(GRAPH), f"import cycles: {_cycles(GRAPH)}"


def test_cycle_finder_finds_a_cycle() -> None:
    # The check above is only worth something if the finder can see a cycle at all.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_few_flat_modules() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= MAX_FLAT_MODULES, flat
    assert {Path(n).stem for n in flat} <= GROUND | {"__main__"}, flat


def test_files_stay_small() -> None:
    big = {
        str(p.relative_to(PACKAGE)): n
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not big, f"files over {MAX_FILE_LINES} lines: {big}"


def test_functions_stay_short() -> None:
    long = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_two_modules_share_a_file_name() -> None:
    by_name = defaultdict(list)
    for path in MODULES.values():
        if path.name not in ("__init__.py", "__main__.py"):
            by_name[path.name].append(str(path.relative_to(PACKAGE)))
    twice = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not twice, twice


def test_no_grab_bag_names() -> None:
    bad = [
        str(p.relative_to(PACKAGE))
        for p in MODULES.values()
        if re.search(r"(_ops|util|utils|helpers|misc|common)\.py$", p.name)
        and p.name != "fsutil.py"
    ]
    assert not bad, bad


def _documented_paths() -> set[str]:
    """The paths the tree in docs/architecture.md shows (``cli/train.py``, ``cli/``, ...)."""
    text = DOC.read_text()
    block = text[text.index("## The tree") :].split("```")[1]
    folders: list[str] = []
    paths = set()
    for line in block.splitlines():
        marker = line.find("── ")
        if marker < 0:
            continue
        depth = marker // 4  # "├── " at 0, "│   ├── " at 4, ...
        name = line[marker + 3 :].split()[0]
        del folders[depth:]
        path = "".join(folders) + name
        paths.add(path)
        if name.endswith("/"):
            folders.append(name)
    return paths


DOCUMENTED = _documented_paths()


def test_doc_tree_is_read() -> None:
    assert "cli/train.py" in DOCUMENTED and "store/" in DOCUMENTED and "errors.py" in DOCUMENTED


@pytest.mark.parametrize("module", sorted(MODULES))
def test_architecture_doc_names_every_module(module: str) -> None:
    path = MODULES[module].relative_to(PACKAGE).as_posix()
    wing_package = path.endswith("/__init__.py")
    named = path in DOCUMENTED or (wing_package and path[: -len("__init__.py")] in DOCUMENTED)
    assert named or path == "__init__.py", f"docs/architecture.md's tree does not show {path}"


def test_architecture_doc_shows_no_missing_module() -> None:
    real = {MODULES[m].relative_to(PACKAGE).as_posix() for m in MODULES}
    real |= {f"{wing}/" for wing in {wing_of(m) for m in MODULES} - {"ground"}}
    # folders inside a wing that hold modules (evaluation/tasks/llmforge_smoke/) are real too
    real |= {f"{p.as_posix()}/" for path in list(real) for p in Path(path).parents[:-1]}
    ghosts = sorted(DOCUMENTED - real)
    assert not ghosts, f"docs/architecture.md shows modules that do not exist: {ghosts}"
