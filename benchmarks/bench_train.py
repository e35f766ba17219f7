"""Tokens/s of llmforge's trainer vs a bare loop over the same model, measured side by side.

    python benchmarks/bench_train.py                      # custom Transformer, default config
    python benchmarks/bench_train.py --model qwen         # Qwen2-shaped model vs bare transformers
    python benchmarks/bench_train.py --model qwen --qwen-shape 0.5b --seq 512 --precision bf16

Both candidates train identical copies of the same model on the same kind of batches (same
micro-batch, sequence length, precision, AdamW with foreach, gradient clipping). They
alternate step by step in one process: after each llmforge step, the trainer's callback runs
one bare step, so machine noise hits both alike. The script prints median seconds per step,
tokens/s and the ratio (target for the custom model: trainer / bare >= 0.97).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _qwen_shapes import QWEN_SHAPES, qwen_model

from llmforge.config import TrainingConfig, load_config, parse_overrides
from llmforge.data.samplers import WindowSampler
from llmforge.training.optim import build_optimizer
from llmforge.training.run_setup import prepare_run
from llmforge.training.trainer import Trainer
from llmforge.workspace import resolve_workspace

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "custom-transformer.yaml"


class Done(Exception):
    """Raised by the callback to end the measured steps without a final checkpoint."""


class Alternator:
    """Trainer callback: times llmforge's steps and runs one bare step after each."""

    def __init__(self, bare_step, steps: int) -> None:
        self.bare_step, self.steps = bare_step, steps
        self.ours: list[float] = []
        self.bare: list[float] = []
        self.losses: list[float] = []
        self.mark: float | None = None
        self.n = 0

    def on_step(self, metrics: dict) -> None:
        now = time.perf_counter()
        if self.mark is not None:
            self.ours.append(now - self.mark)
        self.losses.append(metrics["loss"])
        self.n += 1
        if self.n >= self.steps:
            raise Done
        if self.bare_step is None:  # --only ours
            self.mark = time.perf_counter()
            return
        t = time.perf_counter()
        self.bare_step(self.n)
        self.bare.append(time.perf_counter() - t)
        self.mark = time.perf_counter()


def make_bare_step(model, forward, sampler: WindowSampler, cfg: TrainingConfig):
    """What a user writes by hand: forward, loss, backward, clip, AdamW step."""
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.learning_rate,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
        foreach=True,
    )

    losses: list[float] = []

    dev = next(model.parameters()).device

    def step(i: int) -> None:
        x, y = sampler.batch(i - 1, 0)  # bare step i sees the batch of llmforge's step i
        x, y = x.to(dev), y.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = forward(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))  # also waits for a GPU to finish the step

    step.losses = losses  # type: ignore[attr-defined]
    return step


def custom_setup(
    cfg: TrainingConfig, bare_cfg: TrainingConfig, home: str
) -> tuple[Trainer, object]:
    run = prepare_run(resolve_workspace(home), cfg)
    model = copy.deepcopy(run.trainer.adapter.model).float().train()  # fp32 even if ours is bf16
    bare = make_bare_step(model, lambda m, x, y: m(x, y)[1], run.trainer.train_sampler, bare_cfg)
    return run.trainer, bare


def qwen_setup(
    cfg: TrainingConfig, bare_cfg: TrainingConfig, home: str, shape: str, only: str | None
) -> tuple[Trainer | None, object]:
    from llmforge.adapters.qwen import Qwen2Adapter
    from llmforge.device import resolve_device
    from llmforge.modeling.tokenizers import CharTokenizer
    from llmforge.training.distributed import DistContext

    device = resolve_device(cfg.device)
    vocab = QWEN_SHAPES[shape][5]
    model = qwen_model(shape).train().to(device)
    data = torch.randint(0, vocab, (200_000,))
    sampler = WindowSampler(data, cfg.block_size, cfg.batch_size, cfg.seed)

    def hf_loss(m, x, y):  # the usual transformers call: labels = inputs, shifted inside
        return m(input_ids=x, labels=x).loss

    if only == "bare":  # alone, for its peak RSS: no llmforge copy in memory
        return None, make_bare_step(model, hf_loss, sampler, bare_cfg)
    # The copy is taken before build_optimizer may cast ``model`` to bf16.
    bare_model = copy.deepcopy(model) if only is None else None
    adapter = Qwen2Adapter(model, CharTokenizer(["a"]))  # batches are random ids: no text
    trainer = Trainer(
        cfg,
        adapter,
        build_optimizer(adapter, cfg),
        sampler,
        sampler,
        Path(home) / "runs" / "bench",
        {},
        dist=DistContext(device=device),
    )
    bare = make_bare_step(bare_model, hf_loss, sampler, bare_cfg) if bare_model else None
    return trainer, bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["custom", "qwen"], default="custom")
    ap.add_argument("--qwen-shape", choices=sorted(QWEN_SHAPES), default="small")
    ap.add_argument("--steps", type=int, default=25, help="measured steps per candidate")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default: config's)")
    ap.add_argument("--batch", type=int, default=None, help="micro-batch (default: config's)")
    ap.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="auto: what a run's default resolves to on this machine",
    )
    ap.add_argument(
        "--bare-precision",
        choices=["fp32", "bf16"],
        default=None,
        help="the bare loop's precision (default: --precision)",
    )
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--set", action="append", default=[], help="llmforge config override key=value")
    ap.add_argument(
        "--only",
        choices=["ours", "bare"],
        default=None,
        help="run one candidate alone (for its peak RSS)",
    )
    ap.add_argument(
        "--bare-reuse-memory",
        action="store_true",
        help="give the bare loop llmforge's allocator setting too (reuse_freed_memory)",
    )
    args = ap.parse_args()
    if args.bare_reuse_memory:
        from llmforge.training.speed import reuse_freed_memory

        reuse_freed_memory()  # process-wide: with --only bare it changes the bare loop alone

    overrides: dict = {
        "precision": args.precision,
        "max_steps": 100_000,
        "log_interval": 1,
        "eval_interval": 100_000,
        "save_interval": 100_000,
        "sample_interval": 0,
        "run_name": "bench",
        "weight_decay": 0.0,
        "device": args.device,
    }
    if args.model == "qwen":
        overrides |= {"block_size": 256, "batch_size": 1}
    if args.seq:
        overrides["block_size"] = args.seq
    if args.batch:
        overrides["batch_size"] = args.batch
    cfg = load_config(CONFIG, overrides | parse_overrides(args.set))
    if cfg.precision == "auto":
        from llmforge.training.new_run import resolve_precision

        cfg = resolve_precision(cfg)
        print(f"precision auto -> {cfg.precision}", flush=True)
    bare_cfg = cfg.model_copy(update={"precision": args.bare_precision or cfg.precision})
    with tempfile.TemporaryDirectory() as home:
        if args.model == "custom":
            trainer, bare = custom_setup(cfg, bare_cfg, home)
            label = "custom Transformer (configs/custom-transformer.yaml)"
        else:
            trainer, bare = qwen_setup(cfg, bare_cfg, home, args.qwen_shape, args.only)
            label = f"Qwen2 shape {args.qwen_shape!r} vs bare transformers loop"
        tokens = cfg.batch_size * cfg.block_size
        params = sum(p.numel() for p in trainer.adapter.model.parameters()) if trainer else 0
        print(
            f"{label}: {params / 1e6:.1f}M parameters, llmforge {cfg.precision} "
            f"(param_dtype {cfg.param_dtype}, fused_loss {cfg.fused_loss}, "
            f"optimizer {cfg.optimizer_impl}, compile {cfg.compile}) vs bare "
            f"{bare_cfg.precision}; {torch.get_num_threads()} threads, {tokens} tokens/step",
            flush=True,
        )
        if args.only == "bare":
            times = []
            for i in range(1, args.steps + 4):
                t = time.perf_counter()
                bare(i)
                times.append(time.perf_counter() - t)
            t_bare = statistics.median(times[3:])
            print(
                f"  bare loop alone:  {t_bare:.4f} s/step  {tokens / t_bare:,.1f} tok/s  "
                f"(n={len(times[3:])}); loss after {len(times)} steps {bare.losses[-1]:.4f}"
            )
            print(f"  peak RSS: {peak_rss_gb():.2f} GB")
            return
        alt = Alternator(None if args.only == "ours" else bare, args.steps + 3)
        trainer.callbacks = [alt]
        t0 = time.perf_counter()
        with contextlib.suppress(Done):
            trainer.fit()
    print(f"  wall time: {time.perf_counter() - t0:.0f} s; peak RSS {peak_rss_gb():.2f} GB")
    ours = alt.ours[2:]  # drop warm-up steps
    t_ours = statistics.median(ours)
    n = len(alt.losses)
    print(f"  llmforge trainer: {t_ours:.4f} s/step  {tokens / t_ours:,.1f} tok/s  (n={len(ours)})")
    print(f"    loss after {n} steps: {alt.losses[-1]:.4f}  (first steps: {alt.losses[:3]})")
    if args.only == "ours":
        return
    theirs = alt.bare[3:]
    t_bare = statistics.median(theirs)
    print(
        f"  bare loop:        {t_bare:.4f} s/step  {tokens / t_bare:,.1f} tok/s  (n={len(theirs)})"
    )
    print(f"    loss after {len(bare.losses)} steps: {bare.losses[-1]:.4f}")
    print(f"  ratio llmforge/bare: {t_bare / t_ours:.3f}")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    main()
