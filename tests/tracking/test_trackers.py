"""``report_to: [trackio, wandb, mlflow]``, all offline inside tmp_path: each tracker's own
reader shows every metric of metrics.jsonl at the same step, each step once, across a kill past
the last checkpoint and its resume, and the config as params / hyperparameters.

One run trains in subprocesses (trackio fixes its storage folder when first imported, wandb
keeps global state), with all three trackers at once: SIGKILLed while its step-8 checkpoint is
written (steps 5-8 were logged past the step-4 checkpoint), resumed to its end (8), then
extended to 10 steps after that clean end.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tracking_helpers import KILL_AT, metrics_by_tag

from train_helpers import small_corpus, write_config

TRACKERS = ["trackio", "wandb", "mlflow"]
pytest.importorskip("trackio")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TRACKIO_DIR=str(root / "trackio"),
        WANDB_MODE="offline",
        WANDB_DIR=str(root / "wandb"),
        WANDB_SILENT="true",
        MLFLOW_TRACKING_URI=(root / "mlruns").as_uri(),
        MLFLOW_ALLOW_FILE_STORE="true",  # MLflow 3.x refuses file: stores without it
        HF_HUB_OFFLINE="1",
        WANDB_API_KEY="",
    )
    for key in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The killed-then-resumed run; its folder, env, and the two segments' stderr."""
    root = tmp_path_factory.mktemp("trackers")
    home = root / "ws"
    home.mkdir()
    (root / "wandb").mkdir()
    data = str(small_corpus(root / "c.txt"))
    cfg = write_config(root / "t.yaml", data_path=data, sample_interval=0, threads=1)
    env = _env(root)
    common = ["--home", str(home), "train", str(cfg), "--set", f"report_to=[{','.join(TRACKERS)}]"]
    pattern = r"checkpoints/[^/]*step-000008[^/]*/"
    kill = [sys.executable, str(KILL_AT), "write", pattern, "before", "--", *common]
    first = subprocess.run(kill, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    again = [sys.executable, "-m", "llmforge", *common, "--resume", "latest"]
    second = subprocess.run(again, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    extend = ["--resume", "latest", "--max-steps", "10", "--set", "schedule_on_extend=replan"]
    third = subprocess.run(  # after a clean end: nothing may be sent twice
        [*again[:-2], *extend], capture_output=True, text=True, timeout=300, env=env
    )
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-3000:]
    segments = [first, second, third]
    return {"root": root, "run_dir": home / "runs" / "t", "env": env, "segments": segments}


def test_no_tracker_failed(tracked):
    for seg in tracked["segments"]:
        assert "report_to" not in seg.stderr, seg.stderr[-3000:]


def _assert_same(got: dict[str, list[tuple[int, float]]], run_dir: Path) -> None:
    """``{tag: [(step, value)...]}`` from a tracker equals metrics.jsonl: each step once."""
    want = metrics_by_tag(run_dir)
    assert max(want["train/loss"]) == 10 and 6 in want["val/loss"]
    assert set(got) == set(want)
    for tag, points in want.items():
        steps = [s for s, _ in got[tag]]
        assert sorted(steps) == sorted(points), tag  # no duplicate, none missing
        for step, value in got[tag]:
            assert value == pytest.approx(points[step], rel=1e-6), (tag, step)


def _saved_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_mlflow_history_equals_metrics_jsonl(tracked):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = tracked["run_dir"]
    ident = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=tracked["env"]["MLFLOW_TRACKING_URI"])
    run = client.get_run(ident["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    exp = client.get_experiment_by_name("llmforge")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [ident["run_id"]]
    got = {
        tag: [(m.step, m.value) for m in client.get_metric_history(ident["run_id"], tag)]
        for tag in run.data.metrics
    }
    _assert_same(got, run_dir)
    saved = _saved_config(run_dir)
    assert float(run.data.params["learning_rate"]) == saved["learning_rate"]
    assert int(run.data.params["lora.r"]) == saved["lora"]["r"]
    assert json.loads(run.data.params["report_to"]) == TRACKERS


def test_trackio_store_equals_metrics_jsonl(tracked):
    code = (
        "import json, trackio\n"
        "s = trackio.SQLiteStorage\n"
        "print(json.dumps([s.get_runs('llmforge'), s.get_logs('llmforge', 't'),"
        " s.get_run_config('llmforge', 't')]))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=tracked["env"]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs, logs, config = json.loads(res.stdout.strip().splitlines()[-1])
    assert runs == ["t"]
    got: dict[str, list[tuple[int, float]]] = {}
    for row in logs:
        for tag, value in row.items():
            if tag not in ("step", "timestamp") and not tag.startswith("_"):
                got.setdefault(tag, []).append((row["step"], value))
    _assert_same(got, tracked["run_dir"])
    saved = _saved_config(tracked["run_dir"])
    assert config["learning_rate"] == saved["learning_rate"]
    assert config["lora.r"] == saved["lora"]["r"]


# -- wandb's offline run file ------------------------------------------------------------------
# wandb 0.31 ships no Python reader of its .wandb files (the LevelDB-log framing is read by its
# Go core); the records themselves are parsed with wandb's own protobuf schema.
_BLOCK, _HEADER = 32768, 7


def _wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1
    out, pos, chunk = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if length == 0 and kind == 0:
            break
        chunk += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):  # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(chunk)
            out.append(rec)
            chunk = b""
    return out


def test_wandb_offline_files_equal_metrics_jsonl(tracked):
    run_dir = tracked["run_dir"]
    ident = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    files = sorted((run_dir / "wandb").glob(f"offline-run-*-{ident['id']}/run-*.wandb"))
    assert len(files) == 3  # one per segment, the same run id
    got: dict[str, list[tuple[int, float]]] = {}
    config: dict = {}
    for path in files:
        for rec in _wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                items = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in rec.history.item
                }
                step = items.pop("_step", rec.history.step.num)
                for tag, value in items.items():
                    if not tag.startswith("_"):
                        got.setdefault(tag, []).append((step, value))
            elif kind in ("run", "config"):
                updates = rec.run.config.update if kind == "run" else rec.config.update
                for u in updates:
                    config[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    _assert_same(got, run_dir)
    saved = _saved_config(run_dir)
    assert config["learning_rate"] == saved["learning_rate"]
    assert config["lora"]["r"] == saved["lora"]["r"]  # nested: wandb shows sections
