"""Several llmforge processes change the registry at once: no entry is lost or corrupted."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from helpers import make_model
from llmforge.store.registry import ModelRegistry

N_PROCS = 8
N_ADDS = 12
N_PRESEEDED = 3  # per process, deleted by that process while the others add

WORKER = r"""
import os, sys, time
from pathlib import Path
from llmforge.store.registry import ModelEntry, ModelRegistry
from llmforge.workspace import Workspace

root, go = sys.argv[1], sys.argv[5]
idx, n_adds, n_pre = (int(a) for a in sys.argv[2:5])
reg = ModelRegistry(Workspace(root=Path(root)))
deadline = time.time() + 30
while not os.path.exists(go):          # start together
    if time.time() > deadline:
        sys.exit("no go signal")
    time.sleep(0.005)
for j in range(n_adds):
    reg.add(ModelEntry(model_name=f"p{idx}-m{j}", source="local",
                       architecture="custom-transformer", local_path=f"p{idx}-m{j}"))
    if j < n_pre:
        reg.remove(f"seed-{idx}-{j}")
for j in range(0, n_adds, 2):           # delete half of our own entries again
    reg.remove(f"p{idx}-m{j}")
"""


def test_parallel_processes_add_and_delete_without_losing_entries(workspace, tmp_path):
    for i in range(N_PROCS):
        for j in range(N_PRESEEDED):
            make_model(workspace, f"seed-{i}-{j}", write_files=False)
    make_model(workspace, "keep-me", write_files=False)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(workspace.root),
                str(i),
                str(N_ADDS),
                str(N_PRESEEDED),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N_PROCS)
    ]
    time.sleep(0.5)  # let the interpreters import llmforge, then release them together
    go.touch()
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err

    data = json.loads(workspace.registry_path.read_text())  # valid JSON
    expected = {"keep-me"} | {
        f"p{i}-m{j}" for i in range(N_PROCS) for j in range(N_ADDS) if j % 2 == 1
    }
    assert set(data["models"]) == expected
    assert len(data["models"]) == N_PROCS * N_ADDS // 2 + 1
    assert data["schema_version"] == 1
    assert ModelRegistry(workspace).names() == sorted(expected)  # and it validates
    leftovers = [p.name for p in workspace.models_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
