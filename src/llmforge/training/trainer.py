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
from llmforge.checkpoints.layout import latest_checkpoint, step_dirname
from llmforge.config import TrainingConfig
from llmforge.data.samplers import Sampler
from llmforge.device import autocast
from llmforge.errors import CheckpointError, DistributedError, TrainingError
from llmforge.fsutil import failure_cause
from llmforge.inference.generation import SamplingOptions, generate_text
from llmforge.training.checkpointing import prune_checkpoints, rng_state, save_checkpoint
from llmforge.training.distributed import DistContext, is_comm_error
from llmforge.training.optim import lr_at
from llmforge.training.parallel import LossModule, clip_gradients, no_sync


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
        callbacks: Reporters (progress, metrics file); rank 0's only in a distributed run.
        sample_prompt: Ids to start text samples from.
        dist: This process's place in the job (rank, world size, device, strategy).
        train_module: What the training forward goes through: the DDP- or FSDP-wrapped
            :class:`~llmforge.training.parallel.LossModule` (default: the bare one).

    With several processes, rank ``r`` computes micro-batch ``r * grad_accum_steps + m`` of
    every step, so the job sees exactly the micro-batches that one process with
    ``grad_accum_steps * world_size`` would, and averages their gradients alike.
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
    dist: DistContext = field(default_factory=DistContext)
    train_module: torch.nn.Module | None = None

    def __post_init__(self) -> None:
        from llmforge.training.speed import apply_speed_settings

        apply_speed_settings(self.cfg, self.adapter)
        if self.train_module is None:
            self.train_module = LossModule(self.adapter)

    def _emit(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, name, None)  # callbacks may implement any subset
            if method is not None:
                method(*args)

    def _autocast(self) -> torch.autocast:
        return autocast(self.dist.device, self.cfg.precision == "bf16")

    def _to_device(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dev = self.dist.device
        return batch if dev.type == "cpu" else tuple(t.to(dev) for t in batch)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the fixed evaluation batches (RNG untouched).

        Ranks split the batches; every rank runs the same number of forwards (FSDP's
        collectives need that), padding with repeats that count for nothing.
        """
        model, rank, world = self.adapter.model, self.dist.rank, self.dist.world_size
        n = self.cfg.eval_steps
        with torch.random.fork_rng(devices=[]):
            model.eval()
            try:
                total = 0.0
                for i in range(rank, -(-n // world) * world, world):
                    x, y = self._to_device(*self.val_sampler.eval_batch(i % n))
                    with self._autocast():
                        loss = self.train_module(x, y)
                    total += float(loss) if i < n else 0.0
            finally:
                model.train()
        return self.dist.sum(total) / n

    def sample(self) -> str | None:
        """A short text sample from the sample prompt, with a fixed seed (RNG untouched).

        Rank 0 generates alone, except under FSDP: there every rank gathers the whole model
        and generates the same tokens in step (the layers' gathers are collectives). Other
        ranks return None.
        """
        opts = SamplingOptions(
            max_new_tokens=self.cfg.sample_tokens, temperature=0.8, top_k=40, seed=self.cfg.seed
        )
        if not (self.dist.is_main or self.dist.sharded):
            return None
        root = self.train_module
        if self.dist.sharded:
            root.unshard()  # type: ignore[operator]  # FSDP2: the root's own parameters
        try:
            with torch.random.fork_rng(devices=[]):
                prompt = self.adapter.tokenizer.decode(self.sample_prompt)
                text = prompt + generate_text(self.adapter, prompt, opts)
        finally:
            if self.dist.sharded:
                root.reshard()  # type: ignore[operator]
        return text if self.dist.is_main else None

    def save(self, step: int) -> Path:
        """Write a checkpoint of the state after ``step`` steps and prune old ones.

        One process, or DDP: rank 0 writes the usual layout. FSDP: every rank writes its
        shards (``training/sharded.py``). Each rank's RNG state is kept, so a resume at the
        same world size continues exactly; the ranks agree on whether the save succeeded.
        """
        dist = self.dist
        rngs = dist.gather(rng_state())
        self.state["step"] = step
        self.state["rng"] = rngs[0]
        self.state["world_size"] = dist.world_size
        self.state["strategy"] = dist.strategy
        if dist.world_size > 1:
            self.state["rng_by_rank"] = rngs
        kind = getattr(self.train_sampler, "kind", "random-window")
        self.state["sampler"] = {"kind": kind, "seed": self.cfg.seed, "position": step}
        meta = {
            **self.meta,
            "step": step,
            "train_loss": self.state.get("last_loss"),
            "val_loss": self.state.get("last_val_loss"),
        }
        error: BaseException | None = None
        path = self.run_dir / "checkpoints" / step_dirname(step)
        try:
            if dist.sharded:
                from llmforge.training.fsdp_checkpoint import save_sharded_checkpoint

                path = save_sharded_checkpoint(
                    self.run_dir, step, self.adapter, self.optimizer, self.state, meta, dist
                )
            elif dist.is_main:
                path = save_checkpoint(
                    self.run_dir, step, self.adapter, self.optimizer, self.state, meta
                )
        except Exception as e:  # safetensors and torch.save wrap I/O errors in their own types
            error = e
        if dist.any(error is not None):
            prev = latest_checkpoint(self.run_dir)
            cause = failure_cause(error) if error else "another process failed to write its part"
            failed = CheckpointError(
                f"Could not write the checkpoint of step {step} under {self.run_dir}: {cause} "
                "(is the disk full, or a file-size limit reached?). Nothing of it was kept"
                + (f"; the previous checkpoint {prev.name} is intact." if prev else "."),
                "Free some disk space (or lower keep_last), then continue with --resume latest.",
            )
            failed.every_rank = error is not None  # each rank tells its own cause
            raise failed from error
        if dist.is_main:
            prune_checkpoints(self.run_dir, self.cfg.keep_last)
        dist.barrier()  # nobody runs ahead while rank 0 prunes
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
            TrainingError: When the loss becomes NaN or infinite (the last checkpoint is kept),
                or another process of a distributed run died, hung or could not be reached
                within ``dist_timeout``.
        """
        try:
            result = self._fit_or_lost_peer(should_stop, stop_at)
        except BaseException as e:  # a second Ctrl-C too: the run did not stop cleanly
            done = int(self.state.get("step", 0))  # the last checkpoint's: the rest is redone
            message = getattr(e, "message", None) or str(e) or type(e).__name__
            failed = {"status": "failed", "step": done, "reason": "error", "error": message[:500]}
            self._emit("on_end", failed)
            raise
        self._emit(
            "on_end",
            {"status": "stopped" if result.stopped_early else "finished", "step": result.step},
        )
        return result

    def _fit_or_lost_peer(
        self, should_stop: Callable[[], bool], stop_at: int | None
    ) -> TrainResult:
        try:
            return self._fit(should_stop, stop_at)
        except RuntimeError as e:
            if self.dist.world_size == 1 or not is_comm_error(e):
                raise
            self.dist.broken = True
            prev = latest_checkpoint(self.run_dir)
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise DistributedError(
                f"Rank {self.dist.rank} lost contact with the other processes of the job at "
                f"step {getattr(self, '_current_step', 0) + 1} ({first}): another process died, "
                f"hung or did not answer within dist_timeout ({self.cfg.dist_timeout:g} s), so "
                "the job stops. "
                + (f"The last complete checkpoint, {prev}, is intact." if prev else ""),
                "Look at the other processes' messages for the cause, then continue with "
                "--resume latest.",
            ) from e

    def _evaluate_and_report(self, step: int) -> None:
        """Validation loss at ``step``: kept in the state (last and best) and reported."""
        val = self.evaluate()
        self.state["last_val_loss"] = val
        best = self.state.get("best_val_loss")
        self.state["best_val_loss"] = val if best is None else min(best, val)
        self._emit("on_eval", {"step": step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))})

    def _fit(self, should_stop: Callable[[], bool], stop_at: int | None) -> TrainResult:
        cfg, model, opt, module = self.cfg, self.adapter.model, self.optimizer, self.train_module
        params = [p for _, p in self.adapter.trainable_parameters()]
        step = int(self.state.get("step", 0))
        losses: list[list[float]] = self.state.setdefault("losses", [])
        end = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
        last_ckpt: Path | None = None
        model.train()
        t_log, tokens_since_log = time.perf_counter(), 0
        t_start = time.perf_counter() - float(self.state.get("elapsed", 0.0))
        while step < end:
            self._current_step = step  # for the message if another process is lost
            lr = lr_at(step, cfg, self.state.get("schedule"))
            for group in opt.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            accum, first_micro = cfg.grad_accum_steps, self.dist.rank * cfg.grad_accum_steps
            for micro in range(accum):
                # (B, T) each: this rank's share of the step's micro-batches
                # a packed sampler adds position_ids (data/packing.py)
                x, y, *pos = self._to_device(*self.train_sampler.batch(step, first_micro + micro))
                with no_sync(module, last_micro=micro == accum - 1):
                    with self._autocast():
                        loss = module(x, y, *pos)
                    (loss / accum).backward()
                loss_sum += float(loss.detach())
                tokens_since_log += x.numel() * self.dist.world_size
            loss_value = self.dist.mean(loss_sum / accum)  # the same on every rank
            grad_norm = float("nan")
            if math.isfinite(loss_value):
                clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                # Gradients are already averaged over the ranks (a DTensor norm under FSDP).
                grad_norm = clip_gradients(params, clip, opt)
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
                self._evaluate_and_report(step)
            if cfg.sample_interval and (step % cfg.sample_interval == 0 or step == cfg.max_steps):
                text = self.sample()
                if text is not None:
                    self._emit("on_sample", step, text)
            # Every rank must stop at the same step: a Ctrl-C may reach them at different times.
            stopping = step == end or self.dist.any(should_stop())
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
