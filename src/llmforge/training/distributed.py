"""The processes of a run: one, or several started by ``torchrun`` (``torch.distributed``).

torchrun (or ``llmforge train --nproc N``, which runs torchrun's launcher) starts one process
per rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and the
rendezvous address in the environment. :func:`init_distributed` joins them into one process
group (``gloo`` on the CPU, ``nccl`` on CUDA) with the config's ``dist_timeout``, so a rank
that died or hangs makes every other rank's next collective fail after at most that long,
instead of waiting forever.

A single process needs no process group, except with ``strategy: fsdp``: FSDP2 always works on
a device mesh, so a one-process FSDP run (a sharded run resumed on one process) joins a
one-member group of its own.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import torch

from llmforge.config import TrainingConfig
from llmforge.device import check_precision, resolve_device
from llmforge.errors import DistributedError


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a ``torchrun`` job (the environment says so)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass
class DistContext:
    """Where this process stands in the job.

    Attributes:
        rank: 0..world_size-1; rank 0 logs, writes metrics and touches the registry.
        world_size: Processes in the job.
        local_rank: Rank on this machine (picks the GPU).
        local_world_size: Processes on this machine.
        device: Where this process computes.
        strategy: ``single`` (one process, no group), ``ddp`` or ``fsdp``.
        group: Whether a process group was initialised (and must be destroyed).
        broken: A collective failed (a peer died or hung): the group is left as it is, since
            destroying it would wait for the lost peer.
        own_env: Environment variables this process set to form a group of one (removed on
            :meth:`close`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    strategy: str = "single"
    group: bool = False
    broken: bool = False
    own_env: list[str] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether parameters and optimizer state are sharded (FSDP)."""
        return self.strategy == "fsdp"

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.group:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        return value if self.world_size == 1 else self.sum(value) / self.world_size

    def sum(self, value: float) -> float:
        """The sum of ``value`` over the ranks."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return float(t)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (so that every rank decides alike)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1 if flag else 0], device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group (if one was joined)."""
        if self.group and torch.distributed.is_initialized() and not self.broken:
            torch.distributed.destroy_process_group()
        self.group = False
        for key in self.own_env:  # the rendezvous variables a one-process group set itself
            os.environ.pop(key, None)
        self.own_env = []

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


_COMM_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer")


def is_comm_error(e: BaseException) -> bool:
    """Whether ``e`` came from a collective that could not complete (a lost or hung peer)."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    text = str(e).lower()
    return any(w in text for w in _COMM_WORDS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _threads_per_rank(cfg: TrainingConfig, local_world_size: int) -> None:
    """One share of the cores per local process, unless ``threads`` says otherwise.

    torchrun sets ``OMP_NUM_THREADS=1`` for several processes, which leaves all but one core
    per process idle on a CPU run; llmforge splits the cores evenly instead.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif local_world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))


def init_distributed(cfg: TrainingConfig) -> DistContext:
    """Join the job's process group (if any) and pick this process's device.

    Raises:
        ConfigError: The device cannot be used (see :func:`~llmforge.device.resolve_device`).
        DistributedError: The other processes could not be reached within ``dist_timeout``.
    """
    torchrun = launched_by_torchrun()
    world = int(os.environ.get("WORLD_SIZE", "1")) if torchrun else 1
    if world == 1 and cfg.strategy != "fsdp":
        return DistContext(device=resolve_device(cfg.device))
    rank = int(os.environ.get("RANK", "0")) if torchrun else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if torchrun else 0
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world))) if torchrun else 1
    device = resolve_device(cfg.device, local_rank)
    _threads_per_rank(cfg, local_world)
    own_env = {}
    if not torchrun:  # a one-process FSDP run: a group of one, on a free local port
        own_env = dict(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1"
        )
        os.environ.update(own_env)
    strategy = cfg.strategy if world > 1 or cfg.strategy == "fsdp" else "single"
    if torch.distributed.is_initialized():  # joined already (a second run in this process)
        return DistContext(rank, world, local_rank, local_world, device, strategy, group=True)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        torch.distributed.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=cfg.dist_timeout),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    except (RuntimeError, ValueError) as e:
        raise DistributedError(
            f"Rank {rank} could not join the other {world - 1} process(es) of the job at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({e}).",
            "Check that every node runs the same torchrun command with the same rendezvous "
            "endpoint, and that the port is reachable (docs/distributed.md).",
        ) from e
    ctx = DistContext(rank, world, local_rank, local_world, device, strategy, group=True)
    ctx.own_env = sorted(own_env)
    return ctx


def join_run(cfg: TrainingConfig) -> DistContext:
    """This process's place in the job (joining the process group on first use), checked
    against the config's precision.

    Raises:
        ConfigError: The device cannot be used, or not with the config's precision.
    """
    dist = init_distributed(cfg)
    check_precision(dist.device, cfg.precision)
    return dist


def fit_world_size(
    cfg: TrainingConfig, state: dict[str, Any], dist: DistContext, warnings: list[str]
) -> TrainingConfig:
    """The config of a run resumed at another number of processes than it was saved at.

    The global batch (micro-batch x accumulation x processes) is kept when the new number
    of processes divides it: then every step still sees the same micro-batches.
    """
    saved = int(state.get("world_size", 1))
    if saved == dist.world_size:
        return cfg
    seqs = cfg.batch_size * cfg.grad_accum_steps * saved
    per_rank = cfg.batch_size * dist.world_size
    how = (
        "the shards of the weights and optimizer state were redistributed"
        if dist.sharded
        else "every process loaded the whole checkpoint"
    )
    if (cfg.grad_accum_steps * saved) % dist.world_size == 0:
        accum = cfg.grad_accum_steps * saved // dist.world_size
        warnings.append(
            f"This run was saved by {saved} process(es) and resumes on {dist.world_size}: "
            f"{how}; the global batch stays {seqs} sequences per step (grad_accum_steps "
            f"{cfg.grad_accum_steps} -> {accum}), so the steps see the same data, but dropout "
            "and the order of floating-point sums differ from an uninterrupted run."
        )
        return TrainingConfig.from_dict({**cfg.to_dict(), "grad_accum_steps": accum})
    warnings.append(
        f"This run was saved by {saved} process(es) and resumes on {dist.world_size}: {how}; "
        f"its global batch of {seqs} sequences cannot be split evenly over {dist.world_size} "
        f"processes, so it becomes {per_rank * cfg.grad_accum_steps} (grad_accum_steps "
        f"{cfg.grad_accum_steps} per process) and the rest of the run differs from an "
        "uninterrupted one."
    )
    return cfg
