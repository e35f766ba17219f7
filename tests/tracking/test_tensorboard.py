"""``report_to: [tensorboard]``: event files read back with TensorBoard's own reader hold every
metric of metrics.jsonl at the same step, the config as hparams, each step once across a stop,
a kill and their resumes, and rank 0's alone under ``--nproc``. Trackers that fail or are
missing never stop training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tracking_helpers import QUIET, assert_tensorboard_matches, listed, ok

from llmforge.tracking.reporter import Reporter, RunInfo
from llmforge.tracking.reporting import RunTracker
from llmforge.tracking.tensorboard import TB_DIR, raw_scalar_points, read_scalars
from train_helpers import run_cli, small_corpus, write_config


def test_every_metric_reaches_tensorboard_across_a_stop_and_resume(runs_home):
    run_dir = runs_home["home"] / "runs" / "tiny"
    assert_tensorboard_matches(run_dir)
    assert len(list((run_dir / TB_DIR).glob("events.out.tfevents.*"))) == 2  # one per segment
    scalars = read_scalars(run_dir / TB_DIR)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 9))
    assert [s for s, _ in scalars["val/loss"]] == [3, 6, 8]
    assert [s for s, _ in scalars["val/ppl"]] == [3, 6, 8]


def test_the_resolved_config_is_the_hparams(runs_home):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = runs_home["home"] / "runs" / "tiny"
    acc = EventAccumulator(str(run_dir / TB_DIR))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert hp["learning_rate"].number_value == saved["learning_rate"]
    assert hp["lora.r"].number_value == saved["lora"]["r"]  # nested keys flattened
    assert hp["model_name"].string_value == "null"
    assert json.loads(hp["report_to"].string_value) == ["tensorboard"]


def test_a_kill_past_the_checkpoint_then_resume_keeps_each_step_once(runs_home):
    run_dir = runs_home["home"] / "runs" / "killed"
    dead = runs_home["dead_points"]
    assert max(s for _, s in dead) == 8 and ("val/loss", 8) in dead  # logged, never saved
    assert_tensorboard_matches(run_dir)  # steps 1-10 once each; no val/loss at 8 any more
    survived = {(t, s): v for t, s, v in raw_scalar_points(run_dir / TB_DIR)}
    assert ("val/loss", 8) not in survived and ("val/loss", 9) in survived
    changed = [k for k in dead if k[1] > 4 and k in survived and survived[k] != dead[k]]
    assert ("train/lr", 5) in changed  # the values are the resumed run's, not the dead one's
    assert all(survived[k] == v for k, v in dead.items() if k[1] <= 4)


def test_tensorboard_added_on_resume_gets_the_earlier_steps_too(tmp_path):
    cfg = write_config(
        tmp_path / "late.yaml",
        data_path=str(small_corpus(tmp_path / "c.txt")),
        **{**QUIET, "report_to": "none"},
    )
    home = tmp_path / "ws"
    home.mkdir()
    ok(home, "train", str(cfg), "--stop-at", "4")
    assert not (home / "runs" / "late" / TB_DIR).exists()
    ok(home, "train", str(cfg), "--resume", "latest", "--set", "report_to=[tensorboard]")
    assert_tensorboard_matches(home / "runs" / "late")
    steps = [s for s, _ in read_scalars(home / "runs" / "late" / TB_DIR)["train/loss"]]
    assert steps == list(range(1, 9))


@pytest.mark.slow
def test_only_rank_0_reports_under_nproc(tmp_path):
    cfg = write_config(
        tmp_path / "ddp.yaml",
        data_path=str(small_corpus(tmp_path / "c.txt")),
        **{**QUIET, "max_steps": 4, "eval_interval": 2},
    )
    home = tmp_path / "ws"
    home.mkdir()
    cmd = [sys.executable, "-m", "llmforge", "--home", str(home), "train", str(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([*cmd, "--nproc", "2"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = home / "runs" / "ddp"
    assert len(list((run_dir / TB_DIR).glob("events.out.tfevents.*"))) == 1  # one writer
    assert_tensorboard_matches(run_dir)  # and no step twice
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["world_size"], status["status"]) == (2, "finished")
    assert status["tokens_per_step"] == 2 * 4 * 32  # both ranks' micro-batches


class Recorder(Reporter):
    """A tracker that records what it is given (or fails on log, as a full disk would)."""

    def __init__(self, name: str, live: bool, fail: bool = False) -> None:
        self.name, self.live, self.fail, self.seen = name, live, fail, []
        self.outcome = None

    def start(self, run, hparams):
        self.hparams = hparams

    def log(self, step, metrics):
        if self.fail:
            raise OSError(28, "No space left on device")
        self.seen.append((step, metrics))

    def close(self, outcome):
        self.outcome = outcome


def test_trackers_that_cannot_take_a_step_back_get_only_checkpointed_steps(tmp_path):
    live, later = Recorder("tensorboard", True), Recorder("wandb", False)
    info = RunInfo("r", tmp_path, tmp_path, 0, 10, {"lr": 1, "lora": {"r": 8}})
    warnings: list[str] = []
    tracker = RunTracker(info, [live, later], warnings.append).start()
    assert later.hparams == {"lr": 1, "lora.r": 8}
    for step in (1, 2, 3):
        tracker.on_step({"step": step, "loss": 1.0 / step, "lr": 0.1})
    tracker.on_eval({"step": 3, "val_loss": 2.0, "val_ppl": 7.4})
    assert len(live.seen) == 4 and later.seen == []
    tracker.on_checkpoint(2, tmp_path)
    assert [s for s, _ in later.seen] == [1, 2]
    tracker.on_step({"step": 4, "loss": 0.2, "lr": 0.1})
    tracker.on_end({"status": "failed", "step": 2, "reason": "error", "error": "boom"})
    tracker.close()  # steps 3-4 are past the last checkpoint: a resume recomputes them
    assert [s for s, _ in later.seen] == [1, 2] and later.outcome == "failed"
    assert live.seen[-1] == (4, {"train/loss": 0.2, "train/lr": 0.1})
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    assert warnings == []


def test_a_tracker_failing_at_every_step_warns_once(tmp_path):
    broken = Recorder("tensorboard", True, fail=True)
    warnings: list[str] = []
    info = RunInfo("r", tmp_path, tmp_path, 0, 10, {})
    tracker = RunTracker(info, [broken], warnings.append).start()
    for step in range(1, 6):
        tracker.on_step({"step": step, "loss": 1.0})
    tracker.on_checkpoint(5, tmp_path)
    tracker.on_end({"status": "finished", "step": 5})
    tracker.close()
    assert len(warnings) == 1, warnings
    assert "No space left on device" in warnings[0] and "Training goes on" in warnings[0]
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"


def test_tensorboard_that_cannot_write_warns_once_and_training_finishes(tmp_path):
    cfg = write_config(
        tmp_path / "blocked.yaml", data_path=str(small_corpus(tmp_path / "c.txt")), **QUIET
    )
    home = tmp_path / "ws"
    (home / "runs" / "blocked").mkdir(parents=True)
    (home / "runs" / "blocked" / TB_DIR).write_text("not a folder")  # TensorBoard cannot start
    res = run_cli(home, "train", str(cfg))
    assert res.exit_code == 0, res.output
    assert res.output.count("report_to tensorboard: start failed") == 1, res.output
    assert "Training goes on" in res.output
    assert listed(home, "blocked")["status"] == "finished"
    assert (home / "runs" / "blocked" / "checkpoints" / "step-000008").is_dir()


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "trackio"])
def test_a_missing_tracker_package_is_refused_before_anything_is_written(tmp_path, tracker):
    # The dev extra installs every tracker: the console runs with this one blocked the way
    # Python documents (``sys.modules[name] = None``: find_spec and import see it missing).
    cfg = write_config(tmp_path / "t.yaml", data_path=str(small_corpus(tmp_path / "c.txt")))
    home = tmp_path / "ws"
    home.mkdir()
    code = f"import sys; sys.modules[{tracker!r}] = None; from llmforge.cli import main; main()"
    args = ["--home", str(home), "train", str(cfg), "--set", f"report_to=[tensorboard,{tracker}]"]
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0
    text = " ".join((res.stdout + res.stderr).split())
    assert f"pip install {tracker}" in text and "Nothing was written" in text, text
    assert "Traceback" not in text
    assert list(home.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none", []),
        (None, []),
        ("tensorboard", ["tensorboard"]),
        ("tensorboard, wandb", ["tensorboard", "wandb"]),
        (["mlflow", "none", "mlflow"], ["mlflow"]),
    ],
)
def test_report_to_takes_the_transformers_forms(value, expected):
    from llmforge.config import TrainingConfig

    assert TrainingConfig.from_dict({"report_to": value}).report_to == expected


def test_report_to_refuses_an_unknown_tracker(tmp_path: Path):
    home = tmp_path / "ws"
    home.mkdir()
    res = run_cli(home, "train", "--set", "report_to=comet")
    assert res.exit_code != 0 and "report_to" in res.output and "tensorboard" in res.output
    assert list(home.iterdir()) == []
