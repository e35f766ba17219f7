"""Instruction and chat data: reading records, chat templates, the loss mask, padded batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmforge.config import TrainingConfig
from llmforge.data.batches import build_batches, load_data
from llmforge.data.chat_templates import CHATML_TEMPLATE, encode_chat, resolve_chat_format
from llmforge.data.data_files import read_data_file
from llmforge.data.samplers import ExampleSampler, make_example
from llmforge.errors import BadRecordError, DataError
from llmforge.modeling.tokenizers import HFTokenizer

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi"},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "hi 2"},
]


@pytest.fixture
def tok(tiny_qwen_repo: Path) -> HFTokenizer:
    return HFTokenizer(tiny_qwen_repo, "native", "tiny")


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
        encoding="utf-8",
    )
    return path


def test_loss_mask_token_by_token(tok: HFTokenizer) -> None:
    fmt = resolve_chat_format(tok)
    assert fmt.source == "model" and fmt.stop_tokens == ("<|im_end|>", "<|endoftext|>")
    ids, trained = encode_chat(tok, fmt, CONV, train_on_prompt=False)
    # The ids are the rendered conversation, tokenized piece by piece.
    rendered = tok.hf.apply_chat_template(CONV, tokenize=False)
    assert tok.decode(ids) == rendered
    pieces = [tok.decode([i]) for i in ids]
    trained_text = [p for p, m in zip(pieces, trained, strict=True) if m]
    assert "".join(trained_text) == "hi<|im_end|>\nhi 2<|im_end|>\n"
    # Token by token: exactly the two assistant turns (content, <|im_end|>, newline).
    im_end = tok.hf.convert_tokens_to_ids("<|im_end|>")
    expected = []
    for turn in ("hi", "hi 2"):
        expected += [*tok.encode(turn), im_end, *tok.encode("\n")]
    assert [i for i, m in zip(ids, trained, strict=True) if m] == expected
    prefix = tok.hf.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True)
    n_prefix = len(tok.encode(prefix))
    assert not any(trained[:n_prefix]) and all(trained[n_prefix : n_prefix + 3])
    # Shifted into an example: labels[t] is the target of position t.
    ex = make_example(ids, trained, block_size=256)
    assert ex is not None
    for t in range(len(ex.input_ids)):
        want = ids[t + 1] if trained[t + 1] else -100
        assert int(ex.labels[t]) == want
    # train_on_prompt trains everything.
    _, all_trained = encode_chat(tok, fmt, CONV, train_on_prompt=True)
    assert all(all_trained)


def test_model_without_template_gets_chatml(tok: HFTokenizer, tmp_path: Path) -> None:
    tok.hf.chat_template = None
    fmt = resolve_chat_format(tok)
    assert fmt.source == "chatml-default" and fmt.template == CHATML_TEMPLATE
    assert tok.hf.chat_template == CHATML_TEMPLATE  # installed: saved with the tokenizer
    ids, _ = encode_chat(tok, fmt, CONV[1:3], train_on_prompt=False)
    assert tok.decode(ids).endswith("<|im_start|>assistant\nhi<|im_end|>\n")
    recorded = resolve_chat_format(tok, None, {"chat_template": "{{ 'x' }}", "source": "config"})
    assert recorded.source == "config" and tok.hf.chat_template == "{{ 'x' }}"

    jinja = tmp_path / "t.jinja"
    jinja.write_text(CHATML_TEMPLATE, encoding="utf-8")
    assert resolve_chat_format(tok, str(jinja)).template == CHATML_TEMPLATE
    with pytest.raises(DataError, match="Cannot read the chat template file"):
        resolve_chat_format(tok, str(tmp_path / "missing.jinja"))


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "bad JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"messages": []}', "'messages' is empty"),
        ('{"messages": "hi"}', "must be a list"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "unknown role 'bot'"),
        ('{"messages": [{"role": "user"}]}', "needs 'role' and 'content'"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no 'assistant' message"),
        ('{"messages": [{"role": "assistant", "content": 3}]}', "must be a string"),
        ('{"prompt": "x"}', "missing 'messages'"),
        ('{"text": ""}', "missing 'messages'"),
    ],
)
def test_malformed_chat_line_names_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    p = _jsonl(tmp_path / "chat.jsonl", [good, "", line, good])
    with pytest.raises(BadRecordError, match=needle) as info:
        read_data_file(str(p), "auto", skip_bad_lines=False)
    assert f"{p}, line 3:" in info.value.message
    skipped = read_data_file(str(p), "auto", skip_bad_lines=True)
    assert len(skipped.records) == 2 and [n for n, _ in skipped.skipped] == [3]


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        (['{"prompt": "a"}'], "no 'text', 'prompt'/'completion' or 'messages' key"),
        (['{"prompt": "a", "completion": 1}'], "'completion' must be a string"),
        (['{"prompt": "a", "completion": " "}'], "'completion' is empty"),
        (['{"text": "  "}'], "'text' is empty"),
    ],
)
def test_malformed_other_records(tmp_path: Path, rows: list[str], needle: str) -> None:
    p = _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(BadRecordError, match=needle):
        read_data_file(str(p), "auto", skip_bad_lines=False)
    with pytest.raises(DataError, match=r"no valid records \(1 bad lines skipped\)"):
        read_data_file(str(p), "auto", skip_bad_lines=True)


def test_formats_are_detected(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain text", encoding="utf-8")
    assert read_data_file(str(tmp_path / "a.txt"), "auto", False).format == "text"
    p = _jsonl(tmp_path / "t.jsonl", [{"text": "doc one"}, {"text": "doc two"}])
    assert read_data_file(str(p), "auto", False).format == "jsonl-text"
    p = _jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    assert read_data_file(str(p), "auto", False).format == "prompt-completion"
    arr = tmp_path / "c.json"
    arr.write_text(json.dumps([{"messages": CONV}]), encoding="utf-8")
    got = read_data_file(str(arr), "auto", False)
    assert got.format == "chat" and got.records[0]["messages"] == CONV
    csv = tmp_path / "pc.csv"
    csv.write_text('prompt,completion\n"1+1=",2\n"2+2=",\n', encoding="utf-8")
    with pytest.raises(BadRecordError, match=r"pc.csv, line 3: 'completion' is empty"):
        read_data_file(str(csv), "auto", False)
    # An explicit format wins over detection.
    with pytest.raises(BadRecordError, match="missing 'messages'"):
        read_data_file(str(p), "chat", False)
    parquet = tmp_path / "d.parquet"
    parquet.write_bytes(b"PAR1")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="needs the 'datasets' library"):
            read_data_file(str(parquet), "auto", False)


def test_padded_rows_give_the_logits_of_the_unpadded_example(tiny_qwen_repo: Path) -> None:
    from llmforge.adapters import get_adapter

    tok = HFTokenizer(tiny_qwen_repo)
    adapter = get_adapter("qwen2").load(tiny_qwen_repo, tok)
    adapter.model.eval()
    fmt = resolve_chat_format(tok)
    short = make_example(*encode_chat(tok, fmt, CONV[1:3], False), block_size=64)
    long = make_example(*encode_chat(tok, fmt, CONV, False), block_size=64)
    assert short is not None and long is not None
    sampler = ExampleSampler([short, long], 64, 2, seed=0, pad_id=0)
    x, y = sampler.eval_batch(0)
    n = len(short.input_ids)
    assert x.shape == (2, len(long.input_ids)) and bool((y[0, n:] == -100).all())
    assert bool((x[0, n:] == 0).all())
    with torch.no_grad():
        padded, loss_padded = adapter.forward(x, y)
        alone, _ = adapter.forward(short.input_ids[None])
        _, loss_short = adapter.forward(short.input_ids[None], short.labels[None])
        _, loss_long = adapter.forward(long.input_ids[None], long.labels[None])
    torch.testing.assert_close(padded[0, :n], alone[0], rtol=1e-5, atol=1e-5)
    k_s, k_l = int((short.labels != -100).sum()), int((long.labels != -100).sum())
    expected = (loss_short * k_s + loss_long * k_l) / (k_s + k_l)  # mean over answer tokens
    torch.testing.assert_close(loss_padded, expected, rtol=1e-5, atol=1e-5)


def test_example_sampler_is_a_pure_function_of_seed_step_and_micro(tok: HFTokenizer) -> None:
    fmt = resolve_chat_format(tok)
    exs = []
    for i in range(7):
        conv = [{"role": "user", "content": f"n {i}"}, {"role": "assistant", "content": "x" * i}]
        ex = make_example(*encode_chat(tok, fmt, conv, False), block_size=64)
        assert ex is not None
        exs.append(ex)
    a = ExampleSampler(exs, 64, 3, seed=1, pad_id=0)
    b = ExampleSampler(exs, 64, 3, seed=1, pad_id=0)
    x1, y1 = a.batch(5, 1)
    torch.manual_seed(99)
    x2, y2 = b.batch(5, 1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(a.batch(5, 0)[0], x1) or not torch.equal(a.batch(6, 1)[0], x1)
    # Evaluation batches walk through every example, wrapping around.
    rows = [r for i in range(3) for r in a.eval_batch(i)[0]]
    seen = {
        j
        for r in rows
        for j, e in enumerate(exs)
        if torch.equal(r[: len(e.input_ids)], e.input_ids)
        and bool((r[len(e.input_ids) :] == 0).all())
    }
    assert seen == set(range(7))


def test_truncation_is_counted_and_answerless_examples_dropped(
    tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    from llmforge.adapters import get_adapter

    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ] * 8
    rows.append({"prompt": "x", "completion": "y"})  # wrong format for a chat file
    rows[1] = {"messages": [{"role": "user", "content": "long " * 40}, CONV[2]]}
    rows[2] = {"messages": [{"role": "user", "content": "q"}, CONV[2] | {"content": "b " * 30}]}
    p = _jsonl(tmp_path / "chat.jsonl", rows)
    cfg = TrainingConfig(data_path=str(p), skip_bad_lines=True, block_size=24, val_fraction=0.5)
    data = load_data(cfg)
    assert any("Skipped 1 bad line(s)" in w and "line 9" in w for w in data.warnings)
    adapter = get_adapter("qwen2").load(tiny_qwen_repo, HFTokenizer(tiny_qwen_repo))
    b = build_batches(data, adapter, cfg, 24)
    assert b.meta["format"] == "chat" and b.meta["truncated"] == 2 and b.meta["dropped"] == 1
    assert b.meta["examples"]["train"] + b.meta["examples"]["val"] == 7
    assert any("2 example(s) were longer" in w for w in b.warnings)
    assert b.chat is not None and b.chat["source"] == "model"
    im_end = adapter.tokenizer.hf.convert_tokens_to_ids("<|im_end|>")
    assert im_end in adapter.stop_token_ids()
    assert im_end in adapter.model.generation_config.eos_token_id
    # The sample prompt ends with the generation prompt of the first validation example.
    assert adapter.tokenizer.decode(b.sample_prompt).endswith("<|im_start|>assistant\n")


def test_validation_file_and_format_mismatch(tmp_path: Path, tiny_qwen_repo: Path) -> None:
    from llmforge.adapters import get_adapter

    chat = _jsonl(tmp_path / "c.jsonl", [{"messages": CONV}])
    text = _jsonl(tmp_path / "t.jsonl", [{"text": "abc"}])
    data = load_data(TrainingConfig(data_path=str(chat), val_data_path=str(chat)))
    assert data.val is not None and data.val.format == "chat"
    with pytest.raises(BadRecordError, match=r"t.jsonl, line 1: missing 'messages'"):
        load_data(TrainingConfig(data_path=str(chat), val_data_path=str(text)))
    with pytest.raises(BadRecordError, match=r"c.jsonl, line 1: missing 'text'"):
        load_data(TrainingConfig(data_path=str(text), val_data_path=str(chat)))
    plain = tmp_path / "p.txt"
    plain.write_text("some text", encoding="utf-8")
    with pytest.raises(DataError, match="holds chat data but the training file"):
        load_data(TrainingConfig(data_path=str(plain), val_data_path=str(chat)))
    adapter = get_adapter("qwen2").load(tiny_qwen_repo, HFTokenizer(tiny_qwen_repo))
    cfg = TrainingConfig(data_path=str(chat))
    with pytest.raises(DataError, match="at least 2 are needed"):
        build_batches(load_data(cfg), adapter, cfg, 64)


def test_shipped_example_chat_file_reads() -> None:
    root = Path(__file__).resolve().parents[2]
    data = read_data_file(str(root / "examples/chat-sample.jsonl"), "auto", False)
    assert data.format == "chat" and len(data.records) == 7
