"""The token cache (``<workspace>/.cache/tokenized``): a second build of the same rows with the
same tokenizer and template reads the ids instead of tokenizing; anything that changes the ids
is another entry; a damaged or forged entry never gives a wrong batch; nothing is written
before ``commit()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmforge.adapters import get_adapter
from llmforge.config import TrainingConfig
from llmforge.data.batches import Batches, build_batches, load_data
from llmforge.data.token_cache import FOLDER, TokenCache
from llmforge.modeling.tokenizers import HFTokenizer


def _rows(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"question {i} " + "word " * (i % 5)},
                {"role": "assistant", "content": f"answer {i}"},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture
def chat_cfg(tmp_path: Path) -> TrainingConfig:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)), encoding="utf-8")
    return TrainingConfig(data_path=str(path), block_size=64, val_fraction=0.25)


def _build(repo: Path, cfg: TrainingConfig, cache: TokenCache | None) -> Batches:
    adapter = get_adapter("qwen2").load(repo, HFTokenizer(repo))
    return build_batches(
        load_data(cfg, adapter.tokenizer), adapter, cfg, cfg.block_size, None, cache
    )


def _examples(b: Batches) -> list[tuple[list[int], list[int]]]:
    return [
        (e.input_ids.tolist(), e.labels.tolist())
        for s in (b.train, b.val)
        for e in s.examples  # type: ignore[attr-defined]
    ]


def _entries(root: Path) -> list[Path]:
    return sorted((root / FOLDER).glob("*.safetensors"))


def test_second_build_reads_the_cache_and_gives_the_same_examples(
    tiny_qwen_repo: Path, chat_cfg: TrainingConfig, tmp_path: Path
) -> None:
    root = tmp_path / "ws"
    first_cache = TokenCache(root)
    first = _build(tiny_qwen_repo, chat_cfg, first_cache)
    assert first_cache.misses == 12 and first_cache.hits == 0
    assert not (root / ".cache").exists()  # nothing written before the run exists
    first_cache.commit()
    assert len(_entries(root)) == 2  # the training and the validation records
    again = TokenCache(root)
    second = _build(tiny_qwen_repo, chat_cfg, again)
    assert again.hits == 12 and again.misses == 0
    assert "read from the cache" in (again.note() or "")
    assert (
        _examples(second) == _examples(first) == _examples(_build(tiny_qwen_repo, chat_cfg, None))
    )
    assert second.meta == first.meta and second.chat == first.chat
    # block_size is not part of the key: the untruncated ids serve every block size
    shorter = chat_cfg.model_copy(update={"block_size": 30})
    third = TokenCache(root)
    assert _examples(_build(tiny_qwen_repo, shorter, third)) == _examples(
        _build(tiny_qwen_repo, shorter, None)
    )
    assert third.hits == 12


def test_the_ids_are_read_not_recomputed(
    tiny_qwen_repo: Path, chat_cfg: TrainingConfig, tmp_path: Path
) -> None:
    """An entry rewritten with other (valid) ids under the same name is what the next build
    trains on: the cache is really read, the tokenizer really skipped."""
    root = tmp_path / "ws"
    cache = TokenCache(root)
    _build(tiny_qwen_repo, chat_cfg, cache)
    cache.commit()
    for path in _entries(root):
        t = load_file(path)
        save_file({**t, "ids": torch.full_like(t["ids"], 7)}, path)
    forged = _build(tiny_qwen_repo, chat_cfg, TokenCache(root))
    assert all(set(ids) == {7} for ids, _ in _examples(forged))


@pytest.mark.parametrize(
    "damage",
    ["truncated", "id past the vocabulary", "lengths that do not add up", "wrong dtype", "empty"],
)
def test_a_damaged_entry_is_rebuilt_never_trusted(
    tiny_qwen_repo: Path, chat_cfg: TrainingConfig, tmp_path: Path, damage: str
) -> None:
    root = tmp_path / "ws"
    cache = TokenCache(root)
    expected = _examples(_build(tiny_qwen_repo, chat_cfg, cache))
    cache.commit()
    for path in _entries(root):
        t = load_file(path)
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:-9])
        elif damage == "id past the vocabulary":
            ids = t["ids"].clone()
            ids[0] = 10**6
            save_file({**t, "ids": ids}, path)
        elif damage == "lengths that do not add up":
            save_file({**t, "lengths": t["lengths"] + 1}, path)
        elif damage == "wrong dtype":
            save_file({**t, "ids": t["ids"].to(torch.float32)}, path)
        else:
            path.write_bytes(b"")
    rebuilt = TokenCache(root)
    assert _examples(_build(tiny_qwen_repo, chat_cfg, rebuilt)) == expected
    assert rebuilt.misses == 12 and rebuilt.hits == 0
    rebuilt.commit()  # the damaged entries are replaced by good ones
    fresh = TokenCache(root)
    assert _examples(_build(tiny_qwen_repo, chat_cfg, fresh)) == expected and fresh.hits == 12


@pytest.mark.parametrize(
    "change",
    [{"chat_template": "chatml"}, {"train_on_prompt": True}, {"seed": 5}, "rows", "tokenizer"],
)
def test_what_changes_the_ids_is_another_entry(
    tiny_qwen_repo: Path, chat_cfg: TrainingConfig, tmp_path: Path, change: object
) -> None:
    root = tmp_path / "ws"
    cache = TokenCache(root)
    _build(tiny_qwen_repo, chat_cfg, cache)
    cache.commit()
    cfg, repo = chat_cfg, tiny_qwen_repo
    if change == "rows":
        Path(str(cfg.data_path)).write_text(
            "".join(json.dumps(r) + "\n" for r in _rows(13)), encoding="utf-8"
        )
    elif change == "tokenizer":  # the same vocabulary with one more special token
        repo = tmp_path / "repo2"
        tok = HFTokenizer(tiny_qwen_repo).hf
        tok.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
        tok.save_pretrained(repo)
        for f in tiny_qwen_repo.iterdir():
            if not (repo / f.name).exists():
                (repo / f.name).symlink_to(f)
    else:
        cfg = cfg.model_copy(update=change)
    other = TokenCache(root)
    got = _build(repo, cfg, other)
    # a new split (seed) or new rows share some records' values but never a whole entry
    assert other.hits == 0 and other.misses > 0
    assert _examples(got) == _examples(_build(repo, cfg, None))


def test_no_cache_for_the_char_tokenizer_and_none_for_no_root(tmp_path: Path) -> None:
    from llmforge.adapters.custom import CustomTransformerAdapter
    from llmforge.modeling.tokenizers import CharTokenizer

    text = tmp_path / "t.txt"
    text.write_text("hello world, " * 400, encoding="utf-8")
    cfg = TrainingConfig(data_path=str(text), block_size=16, n_layers=1, d_model=16, n_heads=2)
    data = load_data(cfg)
    adapter = CustomTransformerAdapter.from_config(cfg, CharTokenizer.from_text(data.char_text()))
    cache = TokenCache(tmp_path / "ws")
    build_batches(data, adapter, cfg, 16, None, cache)
    cache.commit()
    assert not (tmp_path / "ws").exists() and cache.note() is None
    off = TokenCache(None)
    assert off.folder is None
    off.commit()
