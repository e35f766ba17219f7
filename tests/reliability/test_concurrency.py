"""Many `llmforge` processes against one workspace at once: nothing is lost or corrupted.

Imports of different models, deletes, registrations of a checkpoint, lists, and two imports
of the same name all run at the same time as real processes. Afterwards `registry.json` is
valid, holds exactly the entries that should exist, and every entry validates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import LocalHub
from train_helpers import run_cli, small_corpus, write_config

IMPORTS = ["m1", "m2", "m3", "m4"]
PRE = ["old1", "old2", "keep"]


def _cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llmforge", "--home", str(home), *args]


@pytest.mark.slow
def test_concurrent_processes_keep_the_registry_whole(
    tmp_path: Path, hub: LocalHub, tiny_qwen_repo: Path
) -> None:
    for name in IMPORTS + PRE + ["dup"]:
        hub.add_repo(f"Qwen/{name}", tiny_qwen_repo, throttle=2_000_000)
    home = tmp_path / "ws"
    home.mkdir()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "LLMFORGE_DEBUG": "",
    }
    env.pop("HF_TOKEN", None)
    for name in PRE:
        res = subprocess.run(
            _cmd(home, "models", "import", f"Qwen/{name}", "--name", name, "--accept-license"),
            env=env,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
    cfg = write_config(tmp_path / "c.yaml", data_path=str(small_corpus(tmp_path / "c.txt")))
    assert run_cli(home, "train", str(cfg), "--max-steps", "4").exit_code == 0

    jobs = {
        **{
            f"import-{n}": _cmd(
                home, "models", "import", f"Qwen/{n}", "--name", n, "--accept-license"
            )
            for n in IMPORTS
        },
        "import-dup-a": _cmd(
            home, "models", "import", "Qwen/dup", "--name", "dup", "--accept-license"
        ),
        "import-dup-b": _cmd(
            home, "models", "import", "Qwen/dup", "--name", "dup", "--accept-license"
        ),
        "delete-old1": _cmd(home, "models", "delete", "old1", "--yes"),
        "delete-old2": _cmd(home, "models", "delete", "old2", "--yes"),
        "register": _cmd(home, "ckpt", "register", "c", "--name", "from-ckpt"),
        **{f"list-{i}": _cmd(home, "models", "list", "--json") for i in range(4)},
    }
    procs = {
        k: subprocess.Popen(v, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k, v in jobs.items()
    }
    results = {k: (p.wait(timeout=300), *p.communicate()) for k, p in procs.items()}

    for k, (rc, out, err) in results.items():
        if k.startswith("import-dup"):
            continue
        assert rc == 0, f"{k}: {err}"
        if k.startswith("list-"):
            json.loads(out)  # every concurrent reader saw a whole, valid registry
    dup = sorted(results[k][0] for k in ("import-dup-a", "import-dup-b"))
    assert dup == [0, 1], dup  # one wins, the other gets a clear error
    loser = next(results[k][2] for k in ("import-dup-a", "import-dup-b") if results[k][0])
    assert "already in the registry" in loser and "--force" in loser
    assert "Traceback" not in loser

    registry = json.loads((home / "models" / "registry.json").read_text())
    assert sorted(registry["models"]) == sorted([*IMPORTS, "dup", "keep", "from-ckpt"])
    visible = sorted(p.name for p in (home / "models").iterdir() if not p.name.startswith("."))
    assert visible == sorted([*IMPORTS, "dup", "keep", "from-ckpt", "registry.json"])
    val = subprocess.run(
        _cmd(home, "models", "validate"), env=env, capture_output=True, text=True, timeout=120
    )
    assert val.returncode == 0, val.stdout + val.stderr
