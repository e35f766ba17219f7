"""Eval records: beside (never inside) the checkpoint, stale when the weights change, and no
record lost when evaluations write at once."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

from llmforge.checkpoints.manifest import check_manifest, write_manifest
from llmforge.checkpoints.standalone import model_files
from llmforge.evaluation import eval_records as rec


def make_checkpoint(root: Path) -> Path:
    """A checkpoint-shaped folder with llmforge's own manifest."""
    ckpt = root / "runs" / "r1" / "checkpoints" / "step-000200"
    (ckpt / "tokenizer").mkdir(parents=True)
    for name in ("meta.json", "trainer_state.json", "config.json", "tokenizer/tokenizer.json"):
        (ckpt / name).write_text("{}\n", encoding="utf-8")
    (ckpt / "model.safetensors").write_bytes(b"\0" * 64)
    write_manifest(ckpt)
    return ckpt


def make_record(subject: rec.Subject, loss: float = 2.5) -> dict:
    data = rec.data_source("val.jsonl", "ab" * 32, "chat")
    return rec.new_record(subject, "heldout", data, {"loss": loss}, {"context": 512})


def write_many(folder: str, n: int) -> None:
    subject = rec.Subject("model", "m", Path(folder), "sha256:x")
    for i in range(n):
        rec.write_record(subject, make_record(subject, float(i)))


def test_a_record_inside_the_checkpoint_folder_would_break_or_leak(tmp_path) -> None:
    """Why records live beside the checkpoint: inside, a visible file makes every load refuse
    the checkpoint as damaged, and a hidden one would be copied by register / export."""
    ckpt = make_checkpoint(tmp_path)
    (ckpt / "evals").mkdir()
    (ckpt / "evals" / "x.json").write_text("{}", encoding="utf-8")
    assert not check_manifest(ckpt).ok
    (ckpt / "evals" / "x.json").unlink()
    (ckpt / "evals").rmdir()
    (ckpt / ".evals").mkdir()
    (ckpt / ".evals" / "x.json").write_text("{}", encoding="utf-8")
    assert any(".evals" in name for name in model_files(ckpt))


def test_records_leave_the_checkpoint_intact_and_go_stale_when_it_is_saved_again(
    tmp_path,
) -> None:
    ckpt = make_checkpoint(tmp_path)
    before = sorted(model_files(ckpt))
    subject = rec.checkpoint_subject(ckpt)
    assert subject.folder == tmp_path / "runs" / "r1" / "evals" / "step-000200"
    assert subject.ref == "r1/step-200" and subject.fingerprint.startswith("sha256:")
    first = rec.write_record(subject, make_record(subject, 2.5))
    rec.write_record(subject, make_record(subject, 2.4))
    assert check_manifest(ckpt).ok and sorted(model_files(ckpt)) == before
    records, bad = rec.read_records(subject)
    assert [r["metrics"]["loss"] for r in records] == [2.5, 2.4] and not bad
    assert [r["metrics"]["loss"] for r in rec.latest(records)] == [2.4]
    saved = json.loads(first.read_text(encoding="utf-8"))
    assert saved["llmforge_version"] and saved["data"]["sha256"] == "ab" * 32
    assert saved["created"].endswith("Z") and saved["subject"]["kind"] == "checkpoint"
    assert list(rec.run_eval_records(tmp_path / "runs" / "r1")) == ["step-000200"]
    (ckpt / "model.safetensors").write_bytes(b"\1" * 64)  # the step is saved again
    write_manifest(ckpt)
    records, _ = rec.read_records(rec.checkpoint_subject(ckpt))
    assert all(r["stale"] for r in records) and rec.latest(records) == []


def test_concurrent_evals_keep_every_record(tmp_path) -> None:
    folder = tmp_path / "models" / ".evals" / "m"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=write_many, args=(str(folder), 25)) for _ in range(2)]
    threads = [threading.Thread(target=write_many, args=(str(folder), 25)) for _ in range(2)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert all(p.exitcode == 0 for p in procs)
    records, bad = rec.read_records(rec.Subject("model", "m", folder, "sha256:x"))
    assert len(records) == 100 and not bad and len({r["id"] for r in records}) == 100
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporaries
