"""The lm-eval bridge: its numbers are lm-eval's own on the exported model, it is silent and
offline, and refusals (unknown task, hostile --include-path, lm-eval missing) are one paragraph."""

from __future__ import annotations

import copy
import socket
import sys
from pathlib import Path

import pytest
from eval_checks import TASKS, compare, local_task, per_sample

from llmforge.errors import EvalError
from llmforge.evaluation import harness


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: the bridge must never reach a network."""

    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network connection attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.mark.parametrize("shots", [0, 2])
def test_bridge_equals_lm_evals_own_hf_model_on_the_export(base, tmp_path, shots) -> None:
    hf = base.tokenizer.hf
    tasks = ("llmforge-smoke", "local-arith")
    opts = harness.HarnessOptions(
        tasks, (str(local_task(tmp_path / "local")),), limit=8, num_fewshot=shots, seed=3
    )
    bridge = harness.evaluate(harness.make_lm(base.model, hf, batch_size=4), opts)
    export = tmp_path / "export"
    base.model.save_pretrained(export)
    hf.save_pretrained(export)
    native = harness.evaluate("hf", opts, f"pretrained={export},dtype=float32,device=cpu")
    compare(bridge, native, tasks)
    assert bridge["n-shot"]["llmforge-smoke"] == shots


def test_lora_unmerged_equals_lm_eval_peft_and_the_merged_export(
    base, tuned, tiny_qwen_repo, tmp_path
) -> None:
    adapter, folder = tuned
    hf = adapter.tokenizer.hf
    opts = harness.HarnessOptions(("llmforge-smoke",), limit=8, num_fewshot=1, seed=3)
    bridge = harness.evaluate(harness.make_lm(adapter.model, hf), opts)
    parent = harness.evaluate(harness.make_lm(base.model, base.tokenizer.hf), opts)
    assert per_sample(bridge, "llmforge-smoke") != pytest.approx(
        per_sample(parent, "llmforge-smoke")
    )
    assert any("lora_A" in n for n, _ in adapter.model.named_parameters())  # still unmerged
    peft_args = f"pretrained={tiny_qwen_repo},peft={folder},dtype=float32,device=cpu"
    compare(bridge, harness.evaluate("hf", opts, peft_args), opts.tasks)
    merged = tmp_path / "merged"
    copy.deepcopy(adapter.model).merge_and_unload().save_pretrained(merged)
    hf.save_pretrained(merged)
    exported = harness.evaluate("hf", opts, f"pretrained={merged},dtype=float32,device=cpu")
    compare(bridge, exported, opts.tasks)


def test_run_tasks_is_silent_offline_and_keeps_the_task_source(base, capfd, no_network) -> None:
    capfd.readouterr()
    opts = harness.HarnessOptions(("llmforge-smoke",), limit=4)
    (row,) = harness.run_tasks(base.model, base.tokenizer.hf, opts)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert set(row.metrics) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert (row.samples, row.samples_total, row.num_fewshot) == (4, 8, 0)
    assert row.source["dataset_path"] is None
    assert set(row.source["files"]) == {
        "llmforge_smoke.yaml",
        "smoke.py",
        "train.jsonl",
        "test.jsonl",
    }


def test_unknown_task_and_missing_lm_eval_are_one_paragraph(base, monkeypatch) -> None:
    with pytest.raises(
        EvalError, match=r"No lm-eval task is named 'llmforge-smok'\. Close names: llmforge-smoke"
    ):
        harness.task_manager(["llmforge-smok"])
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(EvalError, match=r"pip install 'llmforge\[eval\]'"):
        harness.run_tasks(base.model, base.tokenizer.hf, harness.HarnessOptions(("x",)))


HOSTILE = {
    "an installed module": "task: evil\ncustom_dataset: !function os.system\n",
    "a module outside": "task: evil\nprocess_docs: !function ../evil.run\n",
    "an include outside": "task: evil\ninclude: /etc/hostname\n",
    "a python tag": "task: evil\nx: !!python/name:os.system\n",
    "an alias bomb": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    + "task: evil\n",
    "llmforge's own name": "task: llmforge-smoke\ncustom_dataset: !function smoke.load\n",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_include_path_is_refused_before_lm_eval_reads_it(tmp_path, kind) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "evil.yaml").write_text(HOSTILE[kind], encoding="utf-8")
    (folder / "smoke.py").write_text("def load(**_):\n    raise SystemExit(3)\n")
    (tmp_path / "evil.py").write_text("def run(docs):\n    raise SystemExit(3)\n")
    with pytest.raises(EvalError) as e:
        harness.task_manager(["evil"], [str(folder)])
    assert "evil.yaml" in e.value.message and "\n" not in str(e.value)


def test_include_path_link_outside_and_not_a_folder_are_refused(tmp_path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "out.yaml").symlink_to(TASKS / "local_arith" / "local_arith.yaml")
    with pytest.raises(EvalError, match="link to outside"):
        harness.task_manager(["local-arith"], [str(folder)])
    with pytest.raises(EvalError, match="is not a folder"):
        harness.task_manager(["llmforge-smoke"], [str(tmp_path / "nothing")])


def test_a_trusted_include_path_with_its_own_function_runs(base) -> None:
    opts = harness.HarnessOptions(("local-text",), (str(TASKS / "local_text"),), limit=2)
    (row,) = harness.run_tasks(base.model, base.tokenizer.hf, opts)
    assert row.samples == 2 and "bits_per_byte" in row.metrics
    assert Path(row.source["yaml"]).name == "local_text.yaml"
