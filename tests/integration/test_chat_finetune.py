"""Chat fine-tuning end to end: train the tiny Qwen on a chat JSONL, then chat with it."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from helpers import run_on_terminal, snapshot
from hubserver import LocalHub
from llmforge.checkpoints.loading import load_checkpoint_adapter
from llmforge.data.chat_templates import prompt_ids
from train_helpers import import_from_local_hub, run_cli, write_config

REPO = "Qwen/Qwen2-Tiny"


@pytest.fixture
def home(tmp_path: Path, hub_env: LocalHub, tiny_qwen_repo: Path) -> Path:
    """A workspace with the tiny Qwen2 imported from the local hub as 'tiny-base'."""
    ws = tmp_path / "ws"
    import_from_local_hub(hub_env, REPO, tiny_qwen_repo, ws, "tiny-base")
    return ws


def _digits(t: tuple[int, ...]) -> str:
    return " ".join(map(str, t))


def _chat_row(user: str, answer: str) -> dict[str, object]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def _config(tmp_path: Path, data: Path, name: str = "chat", **extra: object) -> Path:
    cfg = {
        "model_name": "tiny-base",
        "data_path": str(data),
        "block_size": 48,
        "batch_size": 16,
        "max_steps": 500,
        "warmup_steps": 10,
        "learning_rate": 3e-3,
        "min_lr": 3e-4,
        "weight_decay": 0.0,
        "log_interval": 50,
        "eval_interval": 250,
        "eval_steps": 2,
        "sample_interval": 0,
        "save_interval": 500,
        "seed": 0,
        **extra,
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.items()))
    return p


@pytest.mark.slow
def test_chat_fine_tune_answers_held_out_prompts_and_stops(home: Path, tmp_path: Path) -> None:
    # The task: repeat three digits. 400 of the 1000 triples train; others are held out.
    triples = [(a, b, c) for a in range(10) for b in range(10) for c in range(10)]
    random.Random(0).shuffle(triples)
    train, held_out = triples[:400], triples[-6:]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(_chat_row(_digits(t), _digits(t))) for t in train))
    res = run_cli(home, "train", str(_config(tmp_path, data)))
    assert res.exit_code == 0, res.output
    assert "Chat template: model; a reply ends at <|im_end|>, <|endoftext|>." in res.stdout
    assert "llmforge generate chat --chat" in res.stdout

    ckpt = home / "runs/chat/checkpoints/step-000500"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["data"]["format"] == "chat" and meta["data"]["examples"]["val"] == 40
    assert meta["chat"]["source"] == "model" and "<|im_start|>" in meta["chat"]["chat_template"]
    adapter, _ = load_checkpoint_adapter(ckpt)
    tok = adapter.tokenizer
    im_end = tok.hf.convert_tokens_to_ids("<|im_end|>")
    gen_cfg = json.loads((ckpt / "generation_config.json").read_text())
    assert im_end in gen_cfg["eos_token_id"] and 0 in gen_cfg["eos_token_id"]
    assert tok.hf.chat_template == meta["chat"]["chat_template"]

    for t in held_out:
        res = run_cli(home, "generate", "chat", "--chat", "-m", _digits(t), "-t", "0", "-n", "20")
        assert res.exit_code == 0, res.output
        assert res.stdout == _digits(t) + "\n"  # the answer, then it stopped
    # It stopped because the end-of-turn token is what it predicts after the answer.
    t = held_out[0]
    ids = prompt_ids(tok, [{"role": "user", "content": _digits(t)}]) + tok.encode(_digits(t))
    adapter.model.eval()
    with torch.no_grad():
        logits, _ = adapter.forward(torch.tensor([ids]))
    assert int(logits[0, -1].argmax()) == im_end


def _no_template_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    return dst


def test_base_model_without_template_gets_chatml_recorded(
    home: Path, tmp_path: Path, tiny_qwen_repo: Path
) -> None:
    repo = _no_template_repo(tiny_qwen_repo, tmp_path / "base-repo")
    res = run_cli(home, "models", "import", str(repo), "--name", "plain", "--accept-license")
    assert res.exit_code == 0, res.output
    rows = [json.dumps(_chat_row(f"say {w}", w)) for w in ("a", "b", "c", "d", "e", "f")]
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join([*rows, "{oops", '{"messages": []}']), encoding="utf-8")
    cfg = _config(
        tmp_path,
        data,
        name="plain-chat",
        model_name="plain",
        max_steps=3,
        warmup_steps=0,
        save_interval=3,
        eval_interval=3,
        sample_interval=3,
        sample_tokens=6,
        skip_bad_lines=True,
    )
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    assert "Skipped 2 bad line(s)" in res.stderr and "line 7: bad JSON" in res.stderr
    assert "<|im_start|>assistant\n" in res.stdout  # the sample answers a validation prompt
    ckpt = home / "runs/plain-chat/checkpoints/step-000003"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["chat"]["source"] == "chatml-default"
    assert meta["data"]["skipped_lines"] == 2
    adapter, _ = load_checkpoint_adapter(ckpt)
    assert adapter.tokenizer.hf.chat_template == meta["chat"]["chat_template"]
    res = run_cli(home, "generate", "plain-chat", "-m", "say a", "-n", "4", "--seed", "0")
    assert res.exit_code == 0, res.output
    # The untrained base model (no template) is prompted with ChatML as well.
    res = run_cli(home, "generate", "plain", "--chat", "--system", "Be brief.", "-n", "3")
    assert res.exit_code != 0 and "no message" in res.output


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{bad json", "line 2: bad JSON"),
        ('{"messages": []}', "line 2: 'messages' is empty"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "line 2: message 1 has unknown role"),
        ('{"question": "x"}', "line 2: missing 'messages'"),
    ],
)
def test_malformed_chat_data_fails_cleanly(
    home: Path, tmp_path: Path, line: str, needle: str
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(_chat_row("hi", "hello")) + "\n" + line + "\n", encoding="utf-8")
    before = snapshot(home)
    res = run_cli(home, "train", str(_config(tmp_path, data)))
    assert res.exit_code == 1
    assert f"{data}, {needle}" in res.stderr and "skip_bad_lines" in res.stderr
    assert "Traceback" not in res.output
    assert snapshot(home) == before


def test_custom_transformer_trains_on_jsonl_text_but_not_on_chat(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    home.mkdir()
    text = tmp_path / "docs.jsonl"
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
    docs = [" ".join(random.Random(i).choices(words, k=60)) for i in range(30)]
    text.write_text("\n".join(json.dumps({"text": d}) for d in docs), encoding="utf-8")
    cfg = write_config(tmp_path / "t.yaml", data_path=str(text), max_steps=4)
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    meta = json.loads((home / "runs/t/checkpoints/step-000004/meta.json").read_text())
    assert meta["data"]["format"] == "jsonl-text" and "chat" not in meta
    res = run_cli(home, "generate", "t", "--chat", "-m", "hi")
    assert res.exit_code != 0 and "--chat needs a chat-capable model" in res.stderr
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps(_chat_row("hi", "hello")), encoding="utf-8")
    before = snapshot(home)
    res = run_cli(home, "train", str(write_config(tmp_path / "c.yaml", data_path=str(chat))))
    assert res.exit_code == 1 and "set model_name" in res.stderr.lower()
    assert snapshot(home) == before


def _rewrite(ckpt: Path, name: str, change) -> None:
    """Change the JSON file ``name`` of ``ckpt`` with ``change(obj)``; redo the manifest."""
    from llmforge.checkpoints.manifest import write_manifest

    f = ckpt / name
    obj = json.loads(f.read_text())
    change(obj)
    f.chmod(0o644)
    f.write_text(json.dumps(obj))
    write_manifest(ckpt)


def _as_before_packing(meta: dict) -> None:
    """``meta.json`` as written before the ``packing`` key existed."""
    del meta["config"]["packing"]
    del meta["data"]["packing"]


def _sampler_kind(kind: str):
    return lambda state: state["sampler"].update(kind=kind)


@pytest.mark.parametrize("packing", [True, False])
def test_chat_run_resumes_bit_exact_with_its_template(
    home: Path, tmp_path: Path, packing: bool
) -> None:
    from safetensors.torch import load_file

    # Mixed lengths, so that packed rows hold several conversations of different sizes.
    rows = [
        json.dumps(_chat_row(f"say {w * (i + 1)}", f"{w} {w}")) for i, w in enumerate("abcdefghij")
    ]
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(rows), encoding="utf-8")
    cfg = _config(
        tmp_path,
        data,
        name="resume",
        max_steps=6,
        warmup_steps=1,
        batch_size=3,
        grad_accum_steps=2,
        save_interval=6,
        eval_interval=3,
        chat_template="chatml",
        **({} if packing else {"packing": False}),
    )
    res = run_cli(home, "train", str(cfg), "--run-name", "straight")
    assert res.exit_code == 0, res.output
    assert ("(packed several to a row: packing)" in res.stdout) is packing
    res = run_cli(home, "train", str(cfg), "--run-name", "split", "--stop-at", "3")
    assert res.exit_code == 0, res.output
    if packing:  # a packed run stays packed: turning it off is ignored, said so
        more = ["--set", "packing=false"]
    else:  # a padded checkpoint from before packing existed resumes padded, not packed
        ckpt = home / "runs/split/checkpoints/step-000003"
        # A checkpoint whose batches were of another kind than the resume would make: refused.
        _rewrite(ckpt, "trainer_state.json", _sampler_kind("packed-example"))
        before = snapshot(home)
        res = run_cli(home, "train", str(cfg), "--run-name", "split", "--resume", "latest")
        assert res.exit_code != 0 and "was trained on packed-example batches" in res.stderr
        assert "Traceback" not in res.output and snapshot(home) == before
        _rewrite(ckpt, "trainer_state.json", _sampler_kind("random-example"))
        _rewrite(ckpt, "meta.json", _as_before_packing)
        more = []
    res = run_cli(home, "train", str(cfg), "--run-name", "split", "--resume", "latest", *more)
    assert res.exit_code == 0, res.output
    assert ("ignoring the changed packing" in res.output) is packing
    a = home / "runs/straight/checkpoints/step-000006"
    b = home / "runs/split/checkpoints/step-000006"
    la = json.loads((a / "trainer_state.json").read_text())
    lb = json.loads((b / "trainer_state.json").read_text())
    kind = "packed-example" if packing else "random-example"
    assert la["losses"] == lb["losses"] and lb["sampler"]["kind"] == kind
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.loads((b / "meta.json").read_text())
    assert meta["chat"]["source"] == "config" and meta["data"]["packing"] is packing


def test_a_packed_and_a_padded_run_train_alike(home: Path, tmp_path: Path) -> None:
    # The same examples every step, laid out differently: the same losses to float rounding.
    rows = [
        json.dumps(_chat_row(f"say {w * (i % 4 + 1)}", f"{w}"))
        for i, w in enumerate("abcdefghijklmn")
    ]
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(rows), encoding="utf-8")
    losses = {}
    for packing in (True, False):
        cfg = _config(
            tmp_path,
            data,
            name=f"p{packing}",
            max_steps=5,
            warmup_steps=1,
            batch_size=6,
            save_interval=5,
            eval_interval=5,
            precision="fp32",
            packing=packing,
        )
        res = run_cli(home, "train", str(cfg))
        assert res.exit_code == 0, res.output
        state = home / f"runs/p{packing}/checkpoints/step-000005/trainer_state.json"
        losses[packing] = [loss for _, loss in json.loads(state.read_text())["losses"]]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[True] != losses[True][:1] * 5  # it trained


def test_chat_reads_stdin_or_runs_an_interactive_loop(home: Path) -> None:
    from typer.testing import CliRunner

    from llmforge.cli import app

    args = ["--home", str(home), "generate", "tiny-base", "--chat", "-n", "3", "--seed", "1"]
    res = CliRunner().invoke(app, args, input="hello there\n")
    assert res.exit_code == 0, res.output
    assert res.stdout.endswith("\n") and "you>" not in res.stdout
    # On a terminal (a real pseudo-terminal as stdin) it is a chat loop until /exit.
    res = run_on_terminal(home, *args[2:], typed=b"hello\nand again\n/exit\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Chat with the model")
    assert res.stdout.count("you> ") == 3 and res.stdout.count("model> ") == 2
