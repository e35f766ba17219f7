"""The Ollama Modelfile: Ollama's parser (ported) reads back exactly what was written.

Ollama is not installable here; ``llmforge.exporting.modelfile.parse_modelfile`` ports its
``parser/parser.go`` rune for rune, and these tests pin the port to the expectations of
Ollama's own ``parser_test.go`` and ``template/testdata`` before trusting it.
"""

from __future__ import annotations

import json
import random

import pytest
from gguf_helpers import LICENSE_TEXT, SYSTEM, export

from llmforge.errors import ExportError
from llmforge.exporting.modelfile import (
    OLLAMA_CHATML,
    build_modelfile,
    chatml_equivalent,
    clean,
    license_commands,
    parse_modelfile,
    render_ollama_chatml,
)
from tiny_models import CHAT_TEMPLATE as CHATML

# -- Ollama Modelfile --------------------------------------------------------------------
# Expectations from Ollama's own parser tests (parser/parser_test.go).
OLLAMA_CASES = [
    (
        'FROM foo\nSYSTEM """\nThis is a\nmultiline system.\n"""\n',
        "\nThis is a\nmultiline system.\n",
    ),
    ('FROM foo\nSYSTEM """This is a multiline system."""\n', "This is a multiline system."),
    ('FROM foo\nSYSTEM """"""\n', ""),
    ('FROM foo\nSYSTEM ""\n', ""),
    ('FROM foo\nSYSTEM """\nwith "quotes".\n"""\n', '\nwith "quotes".\n'),
    ('FROM foo\nSYSTEM """This is a multiline system.""\n', None),
    ('FROM foo\nSYSTEM "\n', None),
    ('FROM foo\nSYSTEM """a """ \nb"""\n', None),  # an early close: "b" is no command
]


@pytest.mark.parametrize(("text", "system"), OLLAMA_CASES)
def test_parser_port_agrees_with_ollama(text, system):
    if system is None:
        with pytest.raises(ValueError):
            parse_modelfile(text)
    else:
        assert parse_modelfile(text) == [("model", "foo"), ("system", system)]


def test_ollama_chatml_renders_like_the_chat_template():
    # Ollama's testdata for chatml.gotmpl, system-user-assistant-user.
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Hello, how are you?<|im_end|>\n<|im_start|>assistant\nI'm doing great. How can I "
        "help you today?<|im_end|>\n<|im_start|>user\nI'd like to show off how chat "
        "templating works!<|im_end|>\n<|im_start|>assistant\n"
    )
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ]
    assert render_ollama_chatml(msgs) == expected
    assert chatml_equivalent(CHATML)
    # Qwen2.5-Instruct's kind: a default system prompt when there is none. Not plain ChatML.
    default_system = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Qwen."
        "<|im_end|>\n{% endif %}"
    )
    assert not chatml_equivalent(default_system + CHATML)
    assert not chatml_equivalent(None)


def test_modelfile_for_a_chatml_adapter_export():
    license_text = 'Apache-2.0\nIt says """ \nhere\x0c, and ends with quotes """'
    text = build_modelfile(
        "model.gguf",
        chat_template=CHATML,
        stop_tokens=["<|im_end|>", "<|endoftext|>"],
        system='You are "terse".',
        license_text=license_text,
        adapter_file="adapter.gguf",
    )
    cmds = parse_modelfile(text)
    assert cmds[:3] == [
        ("model", "./model.gguf"),
        ("adapter", "./adapter.gguf"),
        ("template", OLLAMA_CHATML),
    ]
    assert [a for c, a in cmds if c == "stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert 'PARAMETER stop "<|im_end|>"' in text.splitlines()
    assert ("system", 'You are "terse".') in cmds
    assert "".join(a for c, a in cmds if c == "license") == clean(license_text)
    with pytest.raises(ExportError, match="system prompt"):
        build_modelfile("m.gguf", system='cannot """\nbe quoted"')
    with pytest.raises(ExportError, match="file name"):
        build_modelfile("../evil\nFROM x.gguf")


def test_license_texts_round_trip():
    rng = random.Random(0)
    alphabet = ['"', '"', '"', " ", "\t", "\n", "\r", "a", "#", "é", "\x0c"]
    for _ in range(300):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        cmds = parse_modelfile("FROM x\n" + "\n".join(license_commands(t)) + "\n")
        assert "".join(a for c, a in cmds if c == "license") == clean(t)


def test_the_modelfile_of_a_registry_model_export(gguf_ws, tmp_path):
    """FROM the GGUF, the ChatML TEMPLATE, a stop per stop token, the base's LICENSE file."""
    out = export(gguf_ws, tmp_path / "g", "tiny-qwen3", "--format", "gguf")
    cmds = parse_modelfile((out / "Modelfile").read_text())
    assert cmds[:2] == [("model", "./tiny-qwen3-f16.gguf"), ("template", OLLAMA_CHATML)]
    assert [a for c, a in cmds if c == "stop"] == ["<|endoftext|>", "<|im_end|>"]
    licenses = [a for c, a in cmds if c == "license"]
    assert len(licenses) == 2 and "".join(licenses) == clean(LICENSE_TEXT)


def test_the_training_data_s_one_system_prompt_becomes_system(gguf_ws, tmp_path):
    out = export(gguf_ws, tmp_path / "g", "sys", "--format", "gguf")
    cmds = parse_modelfile((out / "Modelfile").read_text())
    assert ("system", SYSTEM) in cmds
    meta = json.loads((gguf_ws / "runs/sys/checkpoints/step-000002/meta.json").read_text())
    assert meta["chat"]["system_prompt"] == SYSTEM
    # The chat run's conversations have none: no SYSTEM.
    out = export(gguf_ws, tmp_path / "c", "chat", "--format", "gguf")
    assert not [c for c, _ in parse_modelfile((out / "Modelfile").read_text()) if c == "system"]
