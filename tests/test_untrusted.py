"""The one YAML loader and the one terminal sanitiser (llmforge.untrusted)."""

from __future__ import annotations

import time

import pytest
import yaml

from llmforge.errors import InvalidModelNameError
from llmforge.store.registry import check_model_name, name_problem, suggest_model_name
from llmforge.untrusted import UntrustedYAMLError, brief, load_yaml, terminal_text


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: 10**levels strings from a few hundred bytes."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        refs = ",".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly() -> None:
    text = billion_laughs()
    assert len(text) < 600
    start = time.process_time()
    with pytest.raises(UntrustedYAMLError, match="expands to more than"):
        load_yaml(text)
    assert time.process_time() - start < 1.0  # CPU time: composing is linear in the text


def test_benign_aliases_and_plain_documents_load() -> None:
    assert load_yaml("a: &x {k: 1}\nb: *x\n") == {"a": {"k": 1}, "b": {"k": 1}}
    assert load_yaml("") is None
    assert load_yaml("- 1\n- two\n") == [1, "two"]


def test_deep_nesting_and_self_reference_are_refused() -> None:
    with pytest.raises(UntrustedYAMLError, match="nested"):
        load_yaml("[" * 50_000 + "]" * 50_000)
    with pytest.raises(UntrustedYAMLError, match="refers to itself"):
        load_yaml("a: &a [*a]\n")


def test_only_plain_data_is_built() -> None:
    with pytest.raises(yaml.YAMLError):
        load_yaml("!!python/object/apply:os.system ['echo hi']")


def test_terminal_text_strips_escapes_and_controls() -> None:
    raw = "MIT\x1b[8mhidden\x1b[0m\x1b]0;title\x07 \x1b[2Jnext\r\nline\u202eevil\x9b31m\ud800 [/]"
    clean = terminal_text(raw)
    assert "\x1b" not in clean and "\r" not in clean and "\x9b" not in clean
    assert "\u202e" not in clean and "\ud800" not in clean
    assert clean == "MIThidden next\nlineevil31m\ufffd [/]"
    assert terminal_text("a\nb", keep_newlines=False) == "a b"


def test_brief_bounds_what_a_message_echoes() -> None:
    out = brief("x" * 1_000_000)
    assert len(out) < 200 and "1,000,000 long" in out
    assert brief("ok") == "'ok'"
    assert "\x1b" not in brief("\x1b[31m")


@pytest.mark.parametrize(
    "name", ["registry.json", "Registry.json", "README.md", "readme.md", "a.lock"]
)
def test_reserved_names_are_refused(name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(InvalidModelNameError, match="not a valid model name"):
        check_model_name(name)
    assert name_problem(suggest_model_name(name)) is None
