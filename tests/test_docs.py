"""Every ``llmforge ...`` command line in README.md and docs/*.md parses with the real app.

``torchrun ... -m llmforge ARGS`` lines count too: their ``llmforge ARGS`` part is checked.

Lines are taken from fenced code blocks; each is parsed (never run) with the Click command
that Typer builds, sub-command by sub-command, so an unknown command or option, a missing
argument or a bad value fails here and the docs cannot drift from the CLI. Placeholders such
as NAME or CKPT are fine as positional values.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmforge.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
PREFIXES = ("llmforge ", "python -m llmforge ")


def doc_command_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for each ``llmforge`` line inside a fenced code block."""
    found, inside = [], False
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        text = line.strip()
        if text.startswith("$ "):
            text = text[2:]
        if inside and text.startswith("torchrun ") and " -m llmforge " in text:
            text = "llmforge " + text.split(" -m llmforge ", 1)[1]  # what each rank runs
        if inside and text.startswith(PREFIXES):
            found.append((no, text))
    return found


def to_args(command: str) -> list[str]:
    """The arguments after ``llmforge``: comments dropped, ``[optional]`` parts expanded."""
    # An unquoted "..." means "more of the same" and is dropped; a quoted "..." is a value.
    command = re.sub(r"(?<![\w\"'])\.\.\.(?![\w\"'])", " ", command)
    words = shlex.split(command, comments=True)
    words = words[3:] if words[0] == "python" else words[1:]
    args: list[str] = []
    for w in words:
        if w == "|":  # "models list | info NAME": shorthand for several commands
            break
        args.extend(p for p in re.split(r"[\[\]]", w) if p)  # [--name NAME] -> --name NAME
    return args


def parse(args: list[str]) -> None:
    """Parse ``args`` like ``llmforge ARGS`` would, down to the leaf command, without running."""
    cmd = typer.main.get_command(app)
    try:
        ctx = cmd.make_context("llmforge", list(args), resilient_parsing=False)
        while hasattr(cmd, "resolve_command"):
            # Click keeps the sub-command and its arguments in (_)protected_args + args.
            protected = getattr(ctx, "_protected_args", None)
            if protected is None:
                protected = ctx.protected_args
            rest = [*protected, *ctx.args]
            if not rest:
                break
            _, cmd, sub_args = cmd.resolve_command(ctx, rest)
            ctx = cmd.make_context(cmd.name, sub_args, parent=ctx, resilient_parsing=False)
    except Exception as e:
        # --help / --version print and exit 0: that parsed.
        if type(e).__name__ == "Exit" and getattr(e, "exit_code", 1) == 0:
            return
        raise


def _all_lines() -> list[tuple[str, int, str]]:
    out = []
    for path in DOC_FILES:
        for no, line in doc_command_lines(path):
            out.append((path.relative_to(ROOT).as_posix(), no, line))
    return out


ALL = _all_lines()


def test_the_docs_show_commands() -> None:
    files = {f for f, _, _ in ALL}
    assert "README.md" in files and "docs/tutorial-qwen.md" in files
    assert len(ALL) >= 30


@pytest.mark.parametrize(("where", "no", "line"), ALL, ids=[f"{f}:{n}" for f, n, _ in ALL])
def test_doc_command_parses(where: str, no: int, line: str) -> None:
    try:
        parse(to_args(line))
    except Exception as e:
        pytest.fail(f"{where}:{no}: `{line}` does not parse: {type(e).__name__}: {e}")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("llmforge train configs/x.yaml --bogus-option 3", "No such option: --bogus-option"),
        ("llmforge models frobnicate NAME", "No such command 'frobnicate'"),
        ("llmforge ckpt register CKPT", "Missing option '--name'"),  # --name is required
        ("llmforge generate NAME --max-new-tokens lots", "'--max-new-tokens'"),
        ("llmforge nosuchcommand", "No such command 'nosuchcommand'"),
    ],
)
def test_a_wrong_command_fails_to_parse(line: str, needle: str, tmp_path: Path) -> None:
    # The real app, as a user runs it: a usage error (exit 2) naming what is wrong, nothing run.
    res = CliRunner().invoke(app, ["--home", str(tmp_path), *to_args(line)])
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split())
    assert list(tmp_path.iterdir()) == []


def test_optional_parts_are_expanded() -> None:
    assert to_args("llmforge models list [--json]   # comment") == ["models", "list", "--json"]
    assert to_args("llmforge train [--set k=v ...] [--max-steps 5]") == [
        "train",
        "--set",
        "k=v",
        "--max-steps",
        "5",
    ]
    assert to_args('llmforge generate M --prompt "..." -n 3') == [
        "generate",
        "M",
        "--prompt",
        "...",
        "-n",
        "3",
    ]
    assert to_args('python -m llmforge generate M --prompt "a b"') == [
        "generate",
        "M",
        "--prompt",
        "a b",
    ]


def test_the_tutorial_shows_what_tutorial_run_runs() -> None:
    """docs/tutorial-qwen.md's outputs come from tests/tutorial_run.py: same commands, same
    snippet, so re-running the script regenerates the tutorial's output."""
    import tutorial_run

    text = (ROOT / "docs" / "tutorial-qwen.md").read_text(encoding="utf-8")
    for command in tutorial_run.COMMANDS:
        assert f"$ {command}\n" in text, command
    assert tutorial_run.LOAD_EXPORT in text


# ``file.py::test_name`` citations in the tests' own READMEs: a path with a folder is from the
# repository root, a bare file name is beside the README. A cited test that was renamed or
# removed would leave an invariant claimed but unchecked.
CITATION = re.compile(r"`((?:[\w/]+/)?test_\w+\.py)(?:::(test_\w+))?`")
TEST_READMES = [ROOT / "tests" / "README.md", ROOT / "tests" / "reliability" / "README.md"]


def cited_tests(readme: Path) -> list[tuple[Path, str | None]]:
    """(test file, test function or None) for every citation in ``readme``."""
    found = []
    for file, name in CITATION.findall(readme.read_text(encoding="utf-8")):
        path = ROOT / file if "/" in file else readme.parent / file
        found.append((path, name or None))
    return found


@pytest.mark.parametrize("readme", TEST_READMES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_tests_readmes_cite_tests_that_exist(readme: Path) -> None:
    if not readme.exists():
        pytest.skip(f"{readme.name} not written yet")
    cited = cited_tests(readme)
    assert cited, f"{readme} cites no test"
    missing = []
    for path, name in cited:
        if not path.is_file():
            missing.append(str(path.relative_to(ROOT)))
        elif name and not re.search(rf"^\s*def {name}\(", path.read_text("utf-8"), re.M):
            missing.append(f"{path.relative_to(ROOT)}::{name}")
    assert not missing, f"{readme.relative_to(ROOT)} cites tests that do not exist: {missing}"


def test_a_citation_of_a_missing_test_is_caught(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("`test_docs.py::test_nothing_here` and `tests/test_docs.py`")
    (path, name), (root_path, none) = cited_tests(readme)
    assert path == tmp_path / "test_docs.py" and name == "test_nothing_here"
    assert root_path == ROOT / "tests" / "test_docs.py" and none is None
    assert not re.search(r"^\s*def test_nothing_here\(", root_path.read_text(), re.M)
