"""``llmforge eval`` end to end: a registry model and its LoRA fine-tune side by side, the
harness numbers equal to lm-eval's own on the export, records shown by ``ckpt info`` and
``models info``, and every bad input one paragraph that leaves the workspace byte-identical."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import assert_unchanged, snapshot
from hubserver import LocalHub
from train_helpers import import_from_local_hub, run_cli, small_corpus

LORA = {
    "model_name": "qwen-base",
    "finetune": "lora",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "block_size": 32,
    "batch_size": 2,
    "max_steps": 2,
    "warmup_steps": 1,
    "learning_rate": 5e-2,
    "log_interval": 1,
    "eval_interval": 2,
    "eval_steps": 1,
    "sample_interval": 0,
    "save_interval": 2,
}
CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"{a} + {b}?"},
            {"role": "assistant", "content": str(a + b)},
        ]
    }
    for a, b in [(1, 2), (3, 4), (5, 6), (2, 2)]
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, hub: LocalHub, tiny_qwen_repo: Path) -> Path:
    """A workspace with ``qwen-base`` and the LoRA run ``lora`` (2 steps), built once."""
    base = tmp_path_factory.mktemp("eval-cli")
    import_from_local_hub(hub, "Qwen/Qwen2-Tiny", tiny_qwen_repo, base / "ws", "qwen-base")
    data = small_corpus(base / "corpus.txt", chars=3000)
    (base / "lora.yaml").write_text(yaml.safe_dump({**LORA, "data_path": str(data)}))
    res = run_cli(base / "ws", "train", str(base / "lora.yaml"))
    assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def home(trained: Path, tmp_path: Path) -> Path:
    """A private copy of that workspace, and held-out files beside it (outside it)."""
    shutil.copytree(trained / "ws", tmp_path / "ws")
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    (tmp_path / "val.txt").write_text(small_corpus(tmp_path / "x.txt", 600).read_text())
    return tmp_path / "ws"


def test_json_rows_side_by_side_records_and_info(home: Path) -> None:
    val = str(home.parent / "val.jsonl")
    args = ("eval", "qwen-base", "lora", "--data", val, "--tasks", "llmforge-smoke", "--json")
    res = run_cli(home, *args, "--limit", "4")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)  # nothing but JSON on stdout
    assert [r["target"] for r in rows] == ["qwen-base", "lora"]
    for r in rows:
        assert r["tokens"] > 0 and r["documents"] == 4 and r["bits_per_byte"] > 0
        assert r["perplexity"] == pytest.approx(2.718281828459045 ** r["loss"])
        assert r["tasks"]["llmforge-smoke"]["samples"] == 4
    assert rows[0]["tokens"] == rows[1]["tokens"] and rows[0]["loss"] != rows[1]["loss"]
    assert len(list((home / "models" / ".evals" / "qwen-base").glob("*.json"))) == 2
    assert len(list((home / "runs" / "lora" / "evals" / "step-000002").glob("*.json"))) == 2

    info = run_cli(home, "ckpt", "info", "lora", "--json")
    assert info.exit_code == 0, info.output  # the checkpoint still reads as intact
    evals = json.loads(info.stdout)["evals"]
    assert {e["kind"] for e in evals} == {"heldout", "harness"}
    assert [e["metrics"]["loss"] for e in evals if e["kind"] == "heldout"] == [rows[1]["loss"]]
    listed = json.loads(run_cli(home, "ckpt", "list", "--json").stdout)
    assert [len(c["evals"]) for c in listed] == [2]
    shown = run_cli(home, "ckpt", "info", "lora")
    assert "Evaluations" in shown.stdout and "llmforge-smoke" in shown.stdout
    models = run_cli(home, "models", "info", "qwen-base")
    assert models.exit_code == 0 and "held-out val.jsonl (chat)" in models.stdout


def test_table_shows_the_difference_to_the_first_target(home: Path) -> None:
    res = run_cli(home, "eval", "qwen-base", "lora", "--data", str(home.parent / "val.txt"))
    assert res.exit_code == 0, res.output
    assert "Δ" in res.stdout and "qwen-base" in res.stdout and "lora" in res.stdout
    rows = json.loads(
        run_cli(
            home,
            "eval",
            "qwen-base",
            "lora",
            "--data",
            str(home.parent / "val.txt"),
            "--json",
            "--no-record",
        ).stdout
    )
    assert f"{rows[1]['loss'] - rows[0]['loss']:+.4f}" in res.stdout


def test_harness_numbers_equal_lm_evals_own_on_the_export(home: Path, tmp_path: Path) -> None:
    import lm_eval

    res = run_cli(home, "eval", "lora", "--tasks", "llmforge-smoke", "--json", "--no-record")
    assert res.exit_code == 0, res.output
    ours = json.loads(res.stdout)[0]["tasks"]["llmforge-smoke"]
    out = tmp_path / "export"
    assert run_cli(home, "ckpt", "export", "lora", str(out), "--merge").exit_code == 0
    from lm_eval.tasks import TaskManager

    from llmforge.evaluation.harness import PACKAGE_TASKS

    theirs = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={out},dtype=float32,device=cpu",
        tasks=["llmforge-smoke"],
        task_manager=TaskManager(include_path=[str(PACKAGE_TASKS)], include_defaults=False),
        random_seed=1234,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
        bootstrap_iters=1000,
    )["results"]["llmforge-smoke"]
    for metric in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
        assert ours[metric] == theirs[f"{metric},none"], metric
    assert ours["samples"] == 8


HOSTILE_TASK = "task: evil\ncustom_dataset: !function os.system\n"


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unknown target", "neither a checkpoint nor a registered model"),
        ("unknown task", "No lm-eval task is named"),
        ("bad data file", "line 2"),
        ("limit 0", "--limit must be at least 1"),
        ("hostile include path", "not a .py file in the --include-path folder"),
        ("nothing to do", "Nothing to evaluate"),
        ("split of a file", "--data-split and --data-config apply to hub datasets only"),
    ],
)
def test_bad_input_is_one_paragraph_and_writes_nothing(home: Path, case: str, needle: str) -> None:
    outside = home.parent
    (outside / "bad.jsonl").write_text(json.dumps(CHATS[0]) + "\n{not json\n")
    (outside / "ev").mkdir()
    (outside / "ev" / "evil.yaml").write_text(HOSTILE_TASK)
    val = str(outside / "val.jsonl")
    args = {
        "unknown target": ["qwen-base", "nope", "--data", val],
        "unknown task": ["qwen-base", "--tasks", "no-such-task-x"],
        "bad data file": ["qwen-base", "--data", str(outside / "bad.jsonl")],
        "limit 0": ["qwen-base", "--data", val, "--limit", "0"],
        "hostile include path": [
            "lora",
            "--tasks",
            "evil",
            "--include-path",
            str(outside / "ev"),
        ],
        "nothing to do": ["qwen-base"],
        "split of a file": ["qwen-base", "--data", val, "--data-split", "test"],
    }[case]
    before = snapshot(home)
    res = run_cli(home, "eval", *args)
    assert res.exit_code != 0
    assert needle in " ".join(res.stderr.split()), res.stderr
    assert res.stderr.count("Error:") == 1 and "Traceback" not in res.output
    assert res.stdout == ""
    assert_unchanged(home, before)
