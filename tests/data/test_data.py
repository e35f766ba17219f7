"""Corpus reading, splitting and the resumable sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmforge.data.corpus import builtin_corpus, read_corpus, split_tokens
from llmforge.data.samplers import WindowSampler
from llmforge.errors import DataError


def test_builtin_corpus_is_real_and_large() -> None:
    c = builtin_corpus()
    assert len(c.text) > 300_000
    assert "def " in c.text and c.source == "builtin:python-stdlib"
    assert builtin_corpus().sha256 == c.sha256  # stable


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"\x00\x01\x02binary", "binary"),
        (b"caf\xe9", "not valid UTF-8"),
        ("dir", "not a file"),
    ],
)
def test_bad_data_files(tmp_path: Path, content: object, needle: str) -> None:
    p = tmp_path / "data.txt"
    if content == "dir":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=needle):
        read_corpus(str(p))


def test_split_needs_a_window_in_each_part() -> None:
    with pytest.raises(DataError, match="block_size"):
        split_tokens(list(range(50)), 0.1, 32)
    s = split_tokens(list(range(1000)), 0.1, 32)
    assert len(s.train) == 900 and len(s.val) == 100
    assert s.val[0].item() == 900


def test_sampler_is_a_pure_function_of_seed_step_and_micro() -> None:
    data = torch.arange(500)
    a = WindowSampler(data, 16, 4, seed=1)
    b = WindowSampler(data, 16, 4, seed=1)
    x1, y1 = a.batch(7, 1)
    torch.manual_seed(123)  # global RNG does not matter
    x2, y2 = b.batch(7, 1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 16)
    assert torch.equal(y1[:, :-1], x1[:, 1:])  # targets are inputs shifted by one
    assert not torch.equal(a.batch(7, 0)[0], x1)
    assert not torch.equal(WindowSampler(data, 16, 4, seed=2).batch(7, 1)[0], x1)
