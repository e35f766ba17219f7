"""``llmforge runs list / show / plot / compare / delete`` on finished, stopped, killed, failed
and running runs (the shared ``runs_home`` workspace, see conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from tracking_helpers import listed, ok

from helpers import assert_unchanged, snapshot
from llmforge.training import run_lock
from train_helpers import run_cli, small_corpus, write_config


def test_list_shows_finished_stopped_and_killed_runs(runs_home):
    home = runs_home["home"]
    stopped = runs_home["stopped_row"]
    assert (stopped["status"], stopped["steps_done"], stopped["max_steps"]) == ("stopped", 5, 8)
    assert stopped["tokens_seen"] == 5 * 4 * 32
    assert stopped["train_loss"] is not None and stopped["val_loss"] is not None

    killed = runs_home["killed_row"]
    assert (killed["status"], killed["status_reason"]) == ("failed", "killed")
    assert killed["steps_done"] == 4 and killed["last_logged_step"] == 8
    assert "failed" in runs_home["killed_list"] and "killed" in runs_home["killed_list"]
    assert "failed (killed)" in runs_home["killed_show"] and "4/8" in runs_home["killed_show"]

    fin = listed(home, "tiny")
    assert (fin["status"], fin["steps_done"], len(fin["segments"])) == ("finished", 8, 2)
    assert listed(home, "killed")["status"] == "finished"  # after its resume
    rows = json.loads(ok(home, "runs", "list", "--json"))
    assert [r["name"] for r in rows] == ["killed", "tiny"]  # the most recently active first
    text = ok(home, "runs", "list")
    assert "tiny" in text and "finished" in text and "8/8" in text and "10/10" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_show_has_summary_checkpoints_evaluations_and_a_plain_plot(runs_home):
    home = runs_home["home"]
    shown = ok(home, "runs", "show", "tiny")
    assert "finished" in shown and "3 checkpoint(s)" in shown and "Evaluations" in shown
    assert "* training loss" in shown and "o validation loss" in shown  # the text plot's key
    assert "\x1b[" not in shown  # no escape sequences when not a terminal
    assert max(len(line) for line in shown.splitlines()) <= 80
    data = json.loads(ok(home, "runs", "show", "tiny", "--json"))
    assert [c["step"] for c in data["checkpoints"]] == [4, 5, 8]
    assert data["series"]["loss"]["steps"] == list(range(1, 9))
    assert [e["step"] for e in data["evaluations"]] == [3, 6, 8]
    res = run_cli(home, "runs", "show", "nope")
    assert res.exit_code == 1 and "No run named 'nope'" in res.output and "tiny" in res.output


def test_a_run_whose_lock_is_held_is_running_and_cannot_be_deleted(runs_home):
    run_dir = runs_home["home"] / "runs" / "tiny"
    lock = run_lock.acquire(run_dir)
    try:
        row = listed(runs_home["home"], "tiny")
        assert row["status"] == "running" and str(os.getpid()) in row["status_detail"]
        before = snapshot(run_dir)
        res = run_cli(runs_home["home"], "runs", "delete", "tiny", "--force")
        assert res.exit_code != 0 and "being trained right now" in res.output
        assert_unchanged(run_dir, before)
    finally:
        lock.release()
    assert listed(runs_home["home"], "tiny")["status"] == "finished"


def test_an_error_in_training_is_failed_with_its_message(tmp_path):
    cfg = write_config(
        tmp_path / "nan.yaml",
        data_path=str(small_corpus(tmp_path / "c.txt")),
        learning_rate=1000.0,
        min_lr=1.0,
        grad_clip=0.0,
        sample_interval=0,
    )
    home = tmp_path / "ws"
    home.mkdir()
    assert run_cli(home, "train", str(cfg)).exit_code != 0
    row = listed(home, "nan")
    assert (row["status"], row["status_reason"]) == ("failed", "error")
    assert "nan" in row["status_detail"].lower() or "inf" in row["status_detail"].lower()


def test_plot_of_two_runs_is_a_real_png_of_the_requested_size(runs_home, tmp_path):
    import matplotlib.image as mpimg

    home, out = runs_home["home"], tmp_path / "curves.png"
    args = ("--metric", "loss", "--metric", "val_loss", "--log-y", "--size", "640x400")
    assert "Wrote" in ok(home, "runs", "plot", "tiny", "killed", "-o", str(out), *args)
    img = mpimg.imread(out)
    assert img.shape[:2] == (400, 640)
    rgb = img[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb.round(2), axis=0)) > 20  # lines, text, two colours: not blank
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary left
    svg = tmp_path / "c.svg"
    ok(home, "runs", "plot", "tiny", "-o", str(svg), "--x", "tokens", "--metric", "lr")
    assert svg.read_text().lstrip().startswith("<?xml")
    res = run_cli(home, "runs", "plot", "tiny", "-o", str(tmp_path / "c.gif"))
    assert res.exit_code != 0 and ".png" in res.output
    res = run_cli(home, "runs", "plot", "tiny", "-o", str(out), "--metric", "nothing")
    assert res.exit_code != 0 and "nothing" in res.output
    (tmp_path / "dir.png").mkdir()
    res = run_cli(home, "runs", "plot", "tiny", "-o", str(tmp_path / "dir.png"))
    assert res.exit_code != 0 and "is a folder" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.svg", "curves.png", "dir.png"]


def test_compare_prints_config_differences_and_final_metrics(runs_home):
    out = json.loads(ok(runs_home["home"], "runs", "compare", "tiny", "killed", "--json"))
    diff = out["config_differences"]
    assert diff["max_steps"] == [8, 10] and diff["run_name"] == ["tiny", "killed"]
    assert diff["schedule_on_extend"] == ["continue", "replan"]
    assert "learning_rate" not in diff
    text = ok(runs_home["home"], "runs", "compare", "tiny", "killed")
    assert "schedule_on_extend" in text and "best val loss" in text


def test_delete_refuses_a_run_a_registered_model_came_from(runs_home, tmp_path):
    home = tmp_path / "ws"
    shutil.copytree(runs_home["home"], home)
    ok(home, "ckpt", "register", "tiny/step-4", "--name", "m1")
    before = snapshot(home)
    res = run_cli(home, "runs", "delete", "tiny", "--yes")
    assert res.exit_code != 0 and "'m1'" in res.output and "Nothing was deleted" in res.output
    assert_unchanged(home, before)
    assert "m1" in ok(home, "runs", "show", "tiny")  # registered as

    res = run_cli(home, "runs", "delete", "tiny")  # no terminal to confirm on
    assert res.exit_code != 0 and "--yes" in res.output
    assert_unchanged(home, before)

    text = " ".join(ok(home, "runs", "delete", "tiny", "--force").split())
    assert not (home / "runs" / "tiny").exists()
    assert not any(p.name.startswith(".trash-") for p in (home / "runs").iterdir())
    assert "freed" in text and "stay on disk" in text
    ok(home, "models", "validate", "m1")  # the model kept its hard links: still whole
    ok(home, "runs", "delete", "killed", "--yes")
    assert json.loads(ok(home, "runs", "list", "--json")) == []


def test_bytes_freed_count_hard_links(tmp_path):
    from llmforge.inspecting.removal import space

    run = tmp_path / "runs" / "r"
    (run / "a").mkdir(parents=True)
    (run / "a" / "f").write_bytes(b"x" * 100)
    os.link(run / "a" / "f", run / "g")  # both links inside: freed
    (tmp_path / "m").mkdir()
    (run / "h").write_bytes(b"y" * 50)
    os.link(run / "h", tmp_path / "m" / "h")  # a link outside: kept
    assert space(run) == (100, 50, 3)


def test_reading_runs_does_not_import_torch(runs_home):
    home = str(runs_home["home"])
    code = (
        "import sys, pathlib; from llmforge.inspecting import overview; from llmforge.workspace "
        f"import Workspace; overview.list_runs(Workspace(pathlib.Path({home!r})));"
        "import llmforge.cli.runs; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
