"""llmforge's from-scratch Transformer + Trainer vs nanoGPT's own model.py and train.py step.

    python benchmarks/bench_nanogpt.py --nanogpt ~/src/nanoGPT                 # fp32 and bf16
    python benchmarks/bench_nanogpt.py --nanogpt ~/src/nanoGPT --precision fp32 --steps 12

``--nanogpt DIR`` is a checkout of https://github.com/karpathy/nanoGPT (see
benchmarks/README.md); nothing is downloaded. The shape is nanoGPT's shakespeare-char config
(6 layers, d 384, 6 heads, block 256, dropout 0.2, lr 1e-3, beta2 0.99, warmup 100,
weight decay 0.1, grad clip 1) at micro-batch 16, on the same text (``--text FILE``, or the
built-in corpus), tokenized once by llmforge's char tokenizer; nanoGPT reads the same ids from
a ``train.bin`` memmap with its own ``get_batch``.

nanoGPT side: its ``GPT`` class (``bias=False``, train.py's default), its
``configure_optimizers`` (fused AdamW only on CUDA, as it decides), its ``get_lr`` and the body
of train.py's loop (forward under its ``ctx``: none on a CPU, bf16 autocast on CUDA; next batch;
backward through its GradScaler; clip; step; zero_grad). llmforge side: ``Trainer.fit`` as
``llmforge train`` runs it (no eval, samples or checkpoints inside the measured steps). The two
alternate step by step in one process (a trainer callback runs one nanoGPT step after each
llmforge step), so load on the machine hits both alike; medians after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmforge.config import TrainingConfig
from llmforge.data.corpus import builtin_corpus
from llmforge.training.run_setup import prepare_run
from llmforge.workspace import resolve_workspace

SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2}
LR, MIN_LR, WARMUP, DECAY_ITERS = 1e-3, 1e-4, 100, 5000  # config/train_shakespeare_char.py


def load_nanogpt(folder: Path):
    """nanoGPT's model.py as a module (its train.py is a script: its step is replayed below)."""
    model_py = folder / "model.py"
    if not (model_py.is_file() and (folder / "train.py").is_file()):
        sys.exit(
            f"{folder} is not a nanoGPT checkout (no model.py and train.py there). Clone "
            "https://github.com/karpathy/nanoGPT and pass its folder with --nanogpt."
        )
    spec = importlib.util.spec_from_file_location("nanogpt_model", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def get_lr(it: int) -> float:
    """train.py's get_lr, with the shakespeare-char settings."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP) / (DECAY_ITERS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


class NanoGPTLoop:
    """train.py's state and the body of its ``while True`` loop, one iteration per call."""

    def __init__(self, ng, vocab: int, data_dir: Path, batch: int, device: torch.device) -> None:
        self.data_dir, self.batch, self.device = data_dir, batch, device
        self.device_type = "cuda" if device.type == "cuda" else "cpu"
        self.block = SHAPE["block_size"]
        with contextlib.redirect_stdout(None):  # its parameter-count prints
            conf = ng.GPTConfig(**SHAPE, bias=False, vocab_size=vocab)
            self.model = ng.GPT(conf).to(device)
            self.optimizer = self.model.configure_optimizers(0.1, LR, (0.9, 0.99), self.device_type)
        dtype = "bfloat16" if self.device_type == "cuda" else "float32"
        self.ctx = (
            contextlib.nullcontext()
            if self.device_type == "cpu"
            else torch.amp.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        )
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == "float16")
        self.iter_num = 0
        self.losses: list[float] = []
        self.X, self.Y = self.get_batch()

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(self.data_dir / "train.bin", dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - self.block, (self.batch,))
        x = torch.stack([torch.from_numpy(data[i : i + self.block].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + self.block].astype(np.int64)) for i in ix]
        )
        if self.device_type == "cuda":
            return (
                x.pin_memory().to(self.device, non_blocking=True),
                y.pin_memory().to(self.device, non_blocking=True),
            )
        return x.to(self.device), y.to(self.device)

    def step(self) -> None:
        lr = get_lr(self.iter_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.ctx:
            _, loss = self.model(self.X, self.Y)
        self.X, self.Y = self.get_batch()
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss.item())  # train.py's lossf at each log_interval
        self.iter_num += 1


class Done(Exception):
    """Ends the measured steps from inside the trainer's callback."""


class Alternate:
    """Trainer callback: times llmforge's steps, runs (and times) one nanoGPT step after each."""

    def __init__(self, other: NanoGPTLoop, steps: int, sync) -> None:
        self.other, self.steps, self.sync = other, steps, sync
        self.ours: list[float] = []
        self.theirs: list[float] = []
        self.losses: list[float] = []
        self.mark: float | None = None

    def on_step(self, metrics: dict) -> None:
        self.sync()
        now = time.perf_counter()
        if self.mark is not None:
            self.ours.append(now - self.mark)
        self.losses.append(metrics["loss"])
        if len(self.losses) >= self.steps:
            raise Done
        t = time.perf_counter()
        self.other.step()
        self.sync()
        self.theirs.append(time.perf_counter() - t)
        self.mark = time.perf_counter()


def run_pair(args, precision: str, text_file: Path, home: Path) -> dict:
    """One llmforge trainer at ``precision`` alternating with nanoGPT's loop."""
    cfg = TrainingConfig(
        n_layers=SHAPE["n_layer"],
        d_model=SHAPE["n_embd"],
        n_heads=SHAPE["n_head"],
        block_size=SHAPE["block_size"],
        dropout=SHAPE["dropout"],
        batch_size=args.batch,
        data_path=str(text_file),
        precision=precision,
        device=args.device,
        learning_rate=LR,
        min_lr=MIN_LR,
        warmup_steps=WARMUP,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        max_steps=DECAY_ITERS,
        log_interval=1,
        eval_interval=10**6,
        save_interval=10**6,
        sample_interval=0,
        run_name=f"bench-{precision}",
        compile=args.compile,
    )
    run = prepare_run(resolve_workspace(str(home)), cfg)
    trainer = run.trainer
    tok = trainer.adapter.tokenizer
    data_dir = home / f"nanogpt-{precision}"
    data_dir.mkdir()
    ids = np.array(tok.encode(text_file.read_text(encoding="utf-8")), dtype=np.uint16)
    ids.tofile(data_dir / "train.bin")
    device = trainer.dist.device
    loop = NanoGPTLoop(load_nanogpt(args.nanogpt), tok.vocab_size, data_dir, args.batch, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    alt = Alternate(loop, args.steps + args.warmup + 1, sync)
    trainer.callbacks = [alt]
    with contextlib.suppress(Done):
        trainer.fit()
    run.close()
    tokens = args.batch * SHAPE["block_size"]
    ours, theirs = alt.ours[args.warmup :], alt.theirs[args.warmup :]
    return {
        "precision": precision,
        "device": str(device),
        "ours": tokens / statistics.median(ours),
        "theirs": tokens / statistics.median(theirs),
        "n": (len(ours), len(theirs)),
        "losses": (alt.losses[-1], loop.losses[-1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    ap.add_argument("--text", type=Path, default=None, help="training text (default: built-in)")
    ap.add_argument("--chars", type=int, default=500_000, help="characters of the text used")
    ap.add_argument("--steps", type=int, default=10, help="measured steps per candidate")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped before the medians")
    ap.add_argument("--batch", type=int, default=16, help="micro-batch (sequences)")
    ap.add_argument("--precision", default="fp32,bf16", help="llmforge precisions, in turn")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="llmforge with compile: true (nanoGPT stays eager); raise --warmup past compiling",
    )
    args = ap.parse_args()
    load_nanogpt(args.nanogpt)  # refuse a wrong folder before any work
    text = args.text.read_text(encoding="utf-8") if args.text else builtin_corpus().text
    load = os.getloadavg()
    print(
        f"nanoGPT shakespeare-char shape, micro-batch {args.batch}, {args.chars:,} characters; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        text_file = home / "text.txt"
        text_file.write_text(text[: args.chars], encoding="utf-8")
        for precision in args.precision.split(","):
            r = run_pair(args, precision.strip(), text_file, home)
            results.append(r)
            print(
                f"  llmforge {r['precision']} ({r['device']}): {r['ours']:,.0f} tok/s   "
                f"nanoGPT: {r['theirs']:,.0f} tok/s   ratio {r['ours'] / r['theirs']:.3f}   "
                f"(n={r['n']}; last losses {r['losses'][0]:.4f} / {r['losses'][1]:.4f})",
                flush=True,
            )
    load = os.getloadavg()
    print(f"  load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
