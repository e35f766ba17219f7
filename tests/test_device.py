"""``precision: auto`` on a CPU: bf16 only where its matmuls are measured to pay (device.py).

A CPU with AVX512-BF16 or AMX flags has its fp32 and bf16 matmul rates timed once per
machine and torch and kept in the user's cache (never in a workspace); bf16 is chosen at
``BF16_MIN_SPEEDUP`` or more. Where a test needs a CPU with the flags on a machine without
them, it replaces llmforge's own flag reader (``_cpu_flags``); the timing and the kept file
are the real ones.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import snapshot
from llmforge import device
from llmforge.device import BF16_MIN_SPEEDUP, bf16_is_fast, cpu_matmul_rates
from train_helpers import run_cli, small_corpus, write_config

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_measurement(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No rates measured earlier in this process, and an empty user cache per test."""
    monkeypatch.setattr(device, "_MEASURED", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "llmforge" / "cpu_matmul.json"


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU reports AVX512-BF16 (whatever it really has)."""
    monkeypatch.setattr(device, "_cpu_flags", lambda: {"fpu", "avx512f", "avx512_bf16"})


def keep(path: Path, rates: object, **others: object) -> None:
    """Write the kept-rates file with ``rates`` under this machine's key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({device._rates_key(): rates, **others}), encoding="utf-8")


def test_the_rates_live_in_the_user_cache_not_a_workspace(_fresh_measurement: Path) -> None:
    assert device.default_rates_file() == _fresh_measurement
    rates = cpu_matmul_rates()
    kept = json.loads(_fresh_measurement.read_text(encoding="utf-8"))
    assert kept == {device._rates_key(): list(rates)}
    assert all(math.isfinite(r) and r > 0 for r in rates)


def test_kept_rates_are_read_back_not_measured_again(_fresh_measurement: Path) -> None:
    keep(_fresh_measurement, [123.0, 456.0])
    assert cpu_matmul_rates() == (123.0, 456.0)
    assert cpu_matmul_rates(_fresh_measurement) == (123.0, 456.0)


@pytest.mark.parametrize(
    ("bf16_rate", "expected"),
    [(100.0 * BF16_MIN_SPEEDUP, True), (100.0 * BF16_MIN_SPEEDUP - 0.1, False), (60.0, False)],
)
def test_bf16_is_chosen_from_the_threshold_up(
    bf16_cpu: None, _fresh_measurement: Path, bf16_rate: float, expected: bool
) -> None:
    keep(_fresh_measurement, [100.0, bf16_rate])
    fast, why = bf16_is_fast(CPU)
    assert fast is expected
    ratio = f"{bf16_rate / 100:.1f}x the fp32 rate ({bf16_rate:.0f} vs 100 GFLOP/s, measured)"
    assert why.startswith("this CPU has AVX512-BF16; its bf16 matmuls run at " + ratio), why
    assert ("at least" if expected else "below") + f" the {BF16_MIN_SPEEDUP}x" in why


DAMAGE = {
    "not json": "{not json",
    "not an object": "[1, 2]",
    "entry not a list": {"x": 1},
    "entry too short": [100.0],
    "entry too long": [100.0, 200.0, 300.0],
    "entry not numbers": ["100", "200"],
    "entry booleans": [True, True],
    "entry NaN": [float("nan"), 200.0],
    "entry zero": [100.0, 0.0],
    "entry negative": [-100.0, 200.0],
    "entry infinite": [100.0, float("inf")],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_or_entry_is_measured_again(_fresh_measurement: Path, damage: str) -> None:
    value = DAMAGE[damage]
    if isinstance(value, str):
        _fresh_measurement.parent.mkdir(parents=True)
        _fresh_measurement.write_text(value, encoding="utf-8")
    else:
        keep(_fresh_measurement, value)
    fp32, bf16 = cpu_matmul_rates()
    assert math.isfinite(fp32) and fp32 > 0 and math.isfinite(bf16) and bf16 > 0
    kept = json.loads(_fresh_measurement.read_text(encoding="utf-8"))
    assert kept[device._rates_key()] == [fp32, bf16]


def test_other_machines_entries_are_kept(_fresh_measurement: Path) -> None:
    keep(_fresh_measurement, "damaged", **{"torch 0.1, cpu flags elsewhere": [1.0, 2.0]})
    rates = cpu_matmul_rates()
    kept = json.loads(_fresh_measurement.read_text(encoding="utf-8"))
    assert kept == {device._rates_key(): list(rates), "torch 0.1, cpu flags elsewhere": [1.0, 2.0]}


def test_a_file_that_cannot_be_written_is_measured_around(tmp_path: Path) -> None:
    blocked = tmp_path / "cpu_matmul.json"
    blocked.mkdir()  # a folder where the file should be: neither readable nor replaceable
    fp32, bf16 = cpu_matmul_rates(blocked)
    assert fp32 > 0 and bf16 > 0
    assert blocked.is_dir() and not any(blocked.iterdir())


def test_processes_started_together_share_one_measurement(tmp_path: Path) -> None:
    """Ranks of one run must agree on the dtype: the first measures, the others read."""
    path = tmp_path / "rates.json"
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from llmforge.device import cpu_matmul_rates\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"  # the barrier: all start measuring at the same moment
        f"print(json.dumps(cpu_matmul_rates(Path({str(path)!r}))), flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    kept = json.loads(path.read_text(encoding="utf-8"))
    assert results[0] == results[1] == results[2]
    assert kept == {device._rates_key(): results[0]}


@pytest.mark.skipif(
    bool(device._cpu_flags() & {"avx512_bf16", "amx_bf16"}), reason="this CPU has bf16 flags"
)
def test_a_cpu_without_bf16_flags_is_not_measured(_fresh_measurement: Path) -> None:
    assert bf16_is_fast(CPU) == (False, "this CPU has no native bf16 (AVX512-BF16 or AMX)")
    assert not _fresh_measurement.parent.exists()


@pytest.mark.parametrize(("bf16_rate", "expected"), [(60.0, "fp32"), (600.0, "bf16")])
def test_a_run_resolves_auto_from_the_kept_rates(
    bf16_cpu: None, _fresh_measurement: Path, tmp_path: Path, bf16_rate: float, expected: str
) -> None:
    keep(_fresh_measurement, [100.0, bf16_rate])
    ws = tmp_path / "ws"
    ws.mkdir()
    cfg = write_config(tmp_path / "t.yaml", data_path=str(small_corpus(tmp_path / "c.txt")),
                       max_steps=2, save_interval=2, sample_interval=0)  # fmt: skip
    res = run_cli(ws, "train", str(cfg))
    assert res.exit_code == 0, res.output
    assert f"Precision: {expected}" in res.stdout
    assert f"{bf16_rate / 100:.1f}x the fp32 rate" in res.stdout
    meta = ws / "runs" / "t" / "checkpoints" / "step-000002" / "meta.json"
    assert json.loads(meta.read_text())["config"]["precision"] == expected


def test_a_refused_run_measures_but_leaves_the_workspace_as_it_was(
    bf16_cpu: None, _fresh_measurement: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    cfg = write_config(tmp_path / "t.yaml", data_path=str(tmp_path / "missing.txt"))
    before = snapshot(ws)
    res = run_cli(ws, "train", str(cfg))
    assert res.exit_code != 0
    assert snapshot(ws) == before
    assert _fresh_measurement.is_file()  # the measurement happened, outside the workspace
