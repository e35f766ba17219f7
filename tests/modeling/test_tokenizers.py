"""The char-level tokenizer: round trip, unseen characters, JSON persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmforge.errors import CheckpointError
from llmforge.modeling.tokenizers import (
    CHAR_VOCAB_FILE,
    UNKNOWN_CHAR,
    CharTokenizer,
    load_tokenizer,
)


def test_round_trip_and_unseen_characters(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.decode(tok.encode("hello\nworld")) == "hello\nworld"
    assert tok.vocab_size == len(set("hello world\n")) + 1
    ids = tok.encode("hé!")  # é and ! never seen
    assert ids[1] == 0 and ids[2] == 0
    assert tok.decode(ids) == f"h{UNKNOWN_CHAR}{UNKNOWN_CHAR}"


def test_saved_as_json_and_reloaded(tmp_path: Path) -> None:
    tok = CharTokenizer.from_text("abc\u00e9\u4e2d")
    tok.save(tmp_path)
    data = json.loads((tmp_path / CHAR_VOCAB_FILE).read_text(encoding="utf-8"))
    assert data["type"] == "char" and data["chars"] == tok.chars
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer)
    assert again.encode("c\u4e2da") == tok.encode("c\u4e2da")


def test_malformed_vocab_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / CHAR_VOCAB_FILE).write_text('{"type": "char", "chars": ["a", "a"]}')
    with pytest.raises(CheckpointError, match="malformed"):
        load_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="No tokenizer"):
        load_tokenizer(tmp_path / "empty")
