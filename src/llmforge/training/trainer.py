"""The training loop. It reports through callbacks and never prints.

Exactness on resume rests on three things: batches are a pure function of (seed, step,
micro-batch); the learning rate is a pure function of the step; and the only global RNG
that training consumes (torch's CPU generator, for dropout) is saved in every checkpoint,
while evaluation and samples run under a forked RNG so they never disturb it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmforge.adapters.base import ModelAdapter
from llmforge.config import TrainingConfig
from llmforge.data import Sampler
from llmforge.errors import CheckpointError, TrainingError
from llmforge.generate import SamplingOptions, generate_text
from llmforge.training.checkpoint import (
    latest_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from llmforge.training.optim import lr_at


class Callback:
    """Receives what the trainer reports. Every method is optional."""

    def on_step(self, metrics: dict[str, Any]) -> None:
        """After a logged optimizer step: step, loss, lr, grad_norm, tokens_per_s, elapsed."""

    def on_eval(self, metrics: dict[str, Any]) -> None:
        """After a validation pass: step, val_loss, val_ppl."""

    def on_sample(self, step: int, text: str) -> None:
        """After a text sample was generated."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint was written."""


@dataclass
class TrainResult:
    """How a call to :meth:`Trainer.fit` ended.

    Attributes:
        step: Optimizer steps completed in the run so far.
        stopped_early: True when stopped by ``should_stop`` or ``stop_at`` before max_steps.
        last_checkpoint: The checkpoint written last, if any.
        losses: ``[step, train loss]`` of every step of the run so far.
        val_loss: The last validation loss, if any.
    """

    step: int
    stopped_early: bool
    last_checkpoint: Path | None
    losses: list[list[float]]
    val_loss: float | None


@dataclass
class Trainer:
    """Runs optimizer steps from ``state['step']`` to ``cfg.max_steps``.

    Attributes:
        cfg: The resolved config.
        adapter: The model and tokenizer.
        optimizer: Built over the adapter's trainable parameters.
        train_sampler: Batches for training.
        val_sampler: Batches for validation.
        run_dir: ``runs/<run>``; checkpoints go under it.
        meta: ``meta.json`` content shared by every checkpoint of the run.
        state: Trainer state (step, losses, best_val_loss, ...) restored on resume.
        callbacks: Reporters (progress, metrics file).
        sample_prompt: Ids to start text samples from.
    """

    cfg: TrainingConfig
    adapter: ModelAdapter
    optimizer: torch.optim.Optimizer
    train_sampler: Sampler
    val_sampler: Sampler
    run_dir: Path
    meta: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)
    sample_prompt: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        from llmforge.training.speed import apply_speed_settings

        apply_speed_settings(self.cfg, self.adapter)

    def _emit(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, name, None)  # callbacks may implement any subset
            if method is not None:
                method(*args)

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the fixed evaluation batches (RNG untouched)."""
        model = self.adapter.model
        with torch.random.fork_rng(devices=[]):
            model.eval()
            try:
                total = 0.0
                for i in range(self.cfg.eval_steps):
                    x, y = self.val_sampler.eval_batch(i)
                    with self._autocast():
                        _, loss = self.adapter.forward(x, y)
                    total += float(loss)
            finally:
                model.train()
        return total / self.cfg.eval_steps

    def sample(self, step: int) -> str:
        """A short text sample from the sample prompt, with a fixed seed (RNG untouched)."""
        opts = SamplingOptions(
            max_new_tokens=self.cfg.sample_tokens, temperature=0.8, top_k=40, seed=self.cfg.seed
        )
        with torch.random.fork_rng(devices=[]):
            prompt = self.adapter.tokenizer.decode(self.sample_prompt)
            return prompt + generate_text(self.adapter, prompt, opts)

    def save(self, step: int) -> Path:
        """Write a checkpoint of the state after ``step`` steps and prune old ones."""
        self.state["step"] = step
        self.state["rng"] = rng_state()
        kind = getattr(self.train_sampler, "kind", "random-window")
        self.state["sampler"] = {"kind": kind, "seed": self.cfg.seed, "position": step}
        meta = {
            **self.meta,
            "step": step,
            "train_loss": self.state.get("last_loss"),
            "val_loss": self.state.get("last_val_loss"),
        }
        try:
            path = save_checkpoint(
                self.run_dir, step, self.adapter, self.optimizer, self.state, meta
            )
        except Exception as e:  # safetensors and torch.save wrap I/O errors in their own types
            prev = latest_checkpoint(self.run_dir)
            cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise CheckpointError(
                f"Could not write the checkpoint of step {step} under {self.run_dir}: {cause} "
                "(is the disk full, or a file-size limit reached?). Nothing of it was kept"
                + (f"; the previous checkpoint {prev.name} is intact." if prev else "."),
                "Free some disk space (or lower keep_last), then continue with --resume latest.",
            ) from e
        prune_checkpoints(self.run_dir, self.cfg.keep_last)
        self._emit("on_checkpoint", step, path)
        return path

    def _non_finite(self, step: int, value: float, what: str = "loss") -> None:
        """Handle a NaN/inf loss at ``step`` (0-based): return to skip the update, or raise.

        Raises:
            TrainingError: With ``nonfinite_loss: stop``, or after too many skips in a row.
        """
        cfg = self.cfg
        fix = (
            "Lower learning_rate, raise warmup_steps, or use precision: fp32; then resume with "
            "--resume latest."
        )
        if cfg.nonfinite_loss == "skip":
            skips = int(self.state.get("consecutive_skips", 0)) + 1
            self.state["consecutive_skips"] = skips
            self.state["skipped_steps"] = int(self.state.get("skipped_steps", 0)) + 1
            if skips <= cfg.max_consecutive_skips:
                return
            raise TrainingError(
                f"The training {what} was {value} for {skips} steps in a row (up to step "
                f"{step + 1}); training stopped. The last checkpoint is intact.",
                fix,
            )
        raise TrainingError(
            f"The training {what} became {value} at step {step + 1}; training stopped and "
            "nothing of this step was saved (the last checkpoint is intact). Set "
            "nonfinite_loss: skip to skip such steps instead.",
            fix,
        )

    def fit(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        stop_at: int | None = None,
    ) -> TrainResult:
        """Train until ``max_steps``, ``stop_at`` (a step number), or ``should_stop()``.

        A checkpoint is written at every ``save_interval``, at the end, and when stopped
        early, so the run can always be resumed.

        Raises:
            TrainingError: When the loss becomes NaN or infinite (the last checkpoint is kept).
        """
        cfg, model, opt = self.cfg, self.adapter.model, self.optimizer
        params = [p for _, p in self.adapter.trainable_parameters()]
        step = int(self.state.get("step", 0))
        losses: list[list[float]] = self.state.setdefault("losses", [])
        end = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
        last_ckpt: Path | None = None
        model.train()
        t_log, tokens_since_log = time.perf_counter(), 0
        t_start = time.perf_counter() - float(self.state.get("elapsed", 0.0))
        while step < end:
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.grad_accum_steps):
                x, y = self.train_sampler.batch(step, micro)  # (B, T) each
                with self._autocast():
                    _, loss = self.adapter.forward(x, y)
                (loss / cfg.grad_accum_steps).backward()
                loss_sum += float(loss.detach())
                tokens_since_log += x.numel()
            loss_value = loss_sum / cfg.grad_accum_steps
            grad_norm = float("nan")
            if math.isfinite(loss_value):
                clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            if math.isfinite(loss_value) and math.isfinite(grad_norm):
                self.state["consecutive_skips"] = 0
                opt.step()
            else:
                # A NaN/inf loss, or a finite loss with overflowing gradients: the update would
                # poison the weights. Raises unless such steps are to be skipped.
                what = "loss" if not math.isfinite(loss_value) else "gradient norm"
                self._non_finite(step, loss_value if what == "loss" else grad_norm, what)
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append([step, loss_value if math.isfinite(loss_value) else None])
            self.state["last_loss"] = loss_value
            self.state["elapsed"] = time.perf_counter() - t_start

            if step % cfg.log_interval == 0 or step == end:
                now = time.perf_counter()
                self._emit(
                    "on_step",
                    {
                        "step": step,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_s": tokens_since_log / max(now - t_log, 1e-9),
                        "elapsed": self.state["elapsed"],
                    },
                )
                t_log, tokens_since_log = now, 0
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                val = self.evaluate()
                self.state["last_val_loss"] = val
                best = self.state.get("best_val_loss")
                self.state["best_val_loss"] = val if best is None else min(best, val)
                self._emit(
                    "on_eval", {"step": step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
                )
            if cfg.sample_interval and (step % cfg.sample_interval == 0 or step == cfg.max_steps):
                self._emit("on_sample", step, self.sample(step))
            stopping = step == end or should_stop()
            if step % cfg.save_interval == 0 or stopping:
                last_ckpt = self.save(step)
            if stopping:
                break
        return TrainResult(
            step=step,
            stopped_early=step < cfg.max_steps,
            last_checkpoint=last_ckpt,
            losses=losses,
            val_loss=self.state.get("last_val_loss"),
        )
