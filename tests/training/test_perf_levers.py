"""The speed levers are exact where they claim to be, and the memory check refuses early.

No timings here: speed is measured side by side in benchmarks/ (see benchmarks/README.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import snapshot
from llmforge.config import TrainingConfig
from llmforge.modeling.fused_loss import fused_linear_cross_entropy
from llmforge.training.master_weights import MasterWeightOptimizer, to_low_precision
from llmforge.training.memory import estimate_memory
from train_helpers import run_cli, small_corpus, write_config


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_loss_matches_plain_cross_entropy(autocast: bool) -> None:
    torch.manual_seed(0)
    h = torch.randn(70, 16, requires_grad=True)
    w = (torch.randn(300, 16) * 0.2).requires_grad_()
    y = torch.randint(0, 300, (70,))
    y[::5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = F.cross_entropy((h @ w.t()).float(), y, ignore_index=-100)
        out = fused_linear_cross_entropy(h, w, y, chunk=32)
    g_ref = torch.autograd.grad(ref * 3, [h, w])
    g_out = torch.autograd.grad(out * 3, [h, w])
    tol = 1e-2 if autocast else 1e-5
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(g_out, g_ref, strict=True):
        assert (a - b).abs().max() <= tol * b.abs().max()


def test_fused_loss_with_every_label_ignored_is_zero() -> None:
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(10, 8, requires_grad=True)
    loss = fused_linear_cross_entropy(h, w, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().sum() == 0


def _opt(params: list[torch.Tensor], fused: bool = False) -> torch.optim.AdamW:
    impl = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(
        [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}],
        lr=1e-2,
        **impl,
    )


@pytest.mark.parametrize("fused", [False, True])
def test_master_weights_follow_an_fp32_adamw_exactly(fused: bool) -> None:
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(6, 3)), torch.nn.Parameter(torch.randn(5))]
    low = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    masters = to_low_precision(low)
    opt = MasterWeightOptimizer(low, masters, _opt(masters, fused))
    ref_opt = _opt(ref, fused)
    for _ in range(4):
        grads = [torch.randn_like(p).to(torch.bfloat16) for p in ref]  # bf16-exact values
        for p, g in zip(ref, grads, strict=True):
            p.grad = g.float()
        for p, g in zip(low, grads, strict=True):
            p.grad = g.clone()
        ref_opt.step()
        opt.step()
        opt.zero_grad()
    for r, m, p in zip(ref, masters, low, strict=True):
        assert torch.equal(r.detach(), m)
        assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), m.to(torch.bfloat16))


def test_master_weights_state_round_trip_restores_masters() -> None:
    torch.manual_seed(1)
    low = [torch.nn.Parameter(torch.randn(4, 4))]
    masters = to_low_precision(low)
    opt = MasterWeightOptimizer(low, masters, _opt(masters))
    low[0].grad = torch.randn(4, 4).to(torch.bfloat16)
    opt.step()
    saved = {k: v for k, v in opt.state_dict().items()}
    fresh_low = [torch.nn.Parameter(low[0].detach().float())]  # bf16-rounded weights
    fresh_masters = to_low_precision(fresh_low)
    fresh = MasterWeightOptimizer(fresh_low, fresh_masters, _opt(fresh_masters))
    fresh.load_state_dict(saved)
    assert torch.equal(fresh_masters[0], masters[0])
    with pytest.raises(ValueError, match="master weights"):
        fresh.load_state_dict({k: v for k, v in saved.items() if k != "master_weights"})


def test_param_dtype_bf16_needs_bf16_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainingConfig(param_dtype="bf16", precision="fp32")
    assert TrainingConfig(precision="bf16").bf16_params
    assert not TrainingConfig(precision="bf16", param_dtype="fp32").bf16_params


def test_estimate_counts_the_optimizer_and_shrinks_with_the_levers() -> None:
    shape = {"n_layers": 24, "hidden_size": 896, "n_heads": 14, "vocab_size": 151936}
    n = 494_000_000
    base = TrainingConfig(
        model_name="m", block_size=512, batch_size=1, precision="bf16", param_dtype="fp32"
    )
    plain = estimate_memory(
        base.model_copy(update={"fused_loss": False}),
        parameters=n,
        trainable=n,
        describe=shape,
    )
    assert plain.optimizer == 8 * n and plain.weights == 4 * n
    fast = estimate_memory(
        base.model_copy(update={"param_dtype": "auto"}), parameters=n, trainable=n, describe=shape
    )
    assert fast.weights == 2 * n and fast.master_weights == 4 * n
    assert fast.logits < plain.logits
    ckpt = estimate_memory(
        base.model_copy(update={"gradient_checkpointing": True}),
        parameters=n,
        trainable=n,
        describe=shape,
    )
    assert ckpt.activations < plain.activations
    assert plain.tokens_per_step == 512


def test_estimate_is_in_the_range_of_a_measured_run(tmp_path: Path) -> None:
    # The run's own peak: `llmforge train` in a subprocess, its max RSS (not this test
    # process's, which holds pytest and whatever earlier tests left). A model big enough that
    # activations, not only the interpreter's overhead, count (~60 MB of the estimate).
    home = tmp_path / "home"
    home.mkdir()
    cfg = write_config(
        tmp_path / "t.yaml",
        data_path=str(small_corpus(tmp_path / "c.txt")),
        precision="fp32",
        d_model=128,
        n_layers=2,
        n_heads=4,
        block_size=128,
        batch_size=16,
        max_steps=2,
        warmup_steps=1,
        eval_interval=100,
        sample_interval=0,
        save_interval=100,
    )
    # A parent whose only child is the run reports the run's max RSS (RUSAGE_CHILDREN).
    report = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(r.returncode)"
    )
    cmd = [sys.executable, "-c", report, sys.executable, "-m", "llmforge", "--home", str(home)]
    res = subprocess.run([*cmd, "train", str(cfg)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    line = next(x for x in out.splitlines() if x.startswith("Memory estimate"))
    m = re.search(r"about ([0-9.]+) (KB|MB|GB)", line)
    assert m is not None, line
    estimate = float(m.group(1)) * {"KB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)]
    peak = int(out.rsplit("PEAK_KB ", 1)[1].split()[0]) * 1024
    # Meant to be a little pessimistic (a run is refused on it), and not wildly so.
    assert peak <= estimate <= 2 * peak, (estimate, peak)


def test_dry_run_prints_the_estimate_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    data = small_corpus(tmp_path / "c.txt")
    cfg = write_config(tmp_path / "t.yaml", data_path=str(data))
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "Memory estimate: about" in res.output and "tokens per step" in res.output
    assert "Nothing was written" in res.output
    assert snapshot(home) == before


def test_a_run_that_cannot_fit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    data = small_corpus(tmp_path / "c.txt")
    cfg = write_config(tmp_path / "t.yaml", data_path=str(data), precision="fp32")
    before = snapshot(home)
    res = run_cli(home, "train", str(cfg), "--set", "memory_limit_gb=0.01")
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert "needs about" in out and "memory_limit_gb" in out
    assert "batch_size=2" in out and "bf16" in out and "--dry-run" in out
    assert snapshot(home) == before


def test_the_architecture_check_of_an_import_loads_no_torch() -> None:
    code = (
        "import sys; from llmforge.importing.architectures import is_supported; "
        "assert is_supported('qwen2') and is_supported('qwen3'); "
        "assert not is_supported('custom-transformer'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_static_importable_list_matches_the_adapters() -> None:
    from llmforge.adapters import BUILTIN, BUILTIN_IMPORTABLE, get_adapter

    assert {a for a in BUILTIN if getattr(get_adapter(a), "importable", 0)} == BUILTIN_IMPORTABLE


def test_bf16_lora_casts_the_frozen_base_without_masters() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llmforge.adapters import peft_lora
    from llmforge.adapters.qwen import Qwen2Adapter
    from llmforge.modeling.tokenizers import CharTokenizer
    from llmforge.training.optim import build_optimizer

    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=64)
    model = Qwen2ForCausalLM(Qwen2Config(**shape, num_key_value_heads=2, intermediate_size=64))
    adapter = Qwen2Adapter(model, CharTokenizer(["a"]))
    cfg = TrainingConfig(model_name="m", finetune="lora", precision="bf16")
    peft_lora.attach(adapter, peft_lora.resolve_settings("qwen2", cfg.lora))
    opt = build_optimizer(adapter, cfg)
    params = list(adapter.model.parameters())
    trainable = [p for p in params if p.requires_grad]
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert len(opt.masters) == len(trainable) < len(params)
    assert all(m.dtype == torch.float32 for m in opt.masters)


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"), ({"GOMP_SPINCOUNT": "5"}, None)],
)
def test_the_cli_lets_idle_openmp_threads_sleep_unless_told_otherwise(
    given: dict[str, str], expected: str | None
) -> None:
    # Under contention, spinning OpenMP threads made 2 threads 6x slower than 1
    # (benchmarks/bench_threads.py); the policy must be in the environment before torch loads.
    code = (
        "import os, sys\n"
        "sys.argv = ['llmforge', '--version']\n"
        "from llmforge.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, **given}
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == str(expected)


def test_the_size_from_a_config_alone_is_a_slight_underestimate(tiny_qwen_repo: Path) -> None:
    # The pre-check before a model is built must never refuse what the exact check accepts.
    from llmforge.modeling.model_size import folder_shape
    from llmforge.modeling.transformer import Transformer, TransformerConfig
    from llmforge.training.memory import custom_shape
    from tiny_models import num_parameters

    shape = folder_shape(tiny_qwen_repo)
    assert shape is not None and 0.8 * num_parameters(tiny_qwen_repo) <= shape.parameters
    assert shape.parameters <= num_parameters(tiny_qwen_repo)
    cfg = TrainingConfig(n_layers=3, d_model=64, n_heads=4, block_size=48)
    model = Transformer(TransformerConfig(vocab_size=77, n_layers=3, d_model=64, n_heads=4,
                                          block_size=48))  # fmt: skip
    assert custom_shape(cfg, 77).parameters == sum(p.numel() for p in model.parameters())
