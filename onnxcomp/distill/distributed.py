"""This process's place in a torch.distributed world (torchrun), or the one process when there is none.

torchrun, and `onnxcomp distill --nproc N` through it, sets RANK, WORLD_SIZE, LOCAL_RANK and
LOCAL_WORLD_SIZE; with WORLD_SIZE > 1 distillation trains under DistributedDataParallel. The backend
follows the training device (`placement`): gloo for CPU tensors; for CUDA, NCCL carries the CUDA
tensors (gradients) and gloo the few CPU ones (data sizes, loss sums), each rank on the GPU of its
local rank (trainer.py moves the student and each batch there). Each rank
trains on its own shard of the data, so the teacher's targets are computed and cached per shard;
the effective batch (`batch_size`) is split across the ranks, so the same options give the same
optimisation steps in any world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from onnxcomp.errors import InputError


class WorldMismatch(InputError):
    """The ranks disagree about something they must share (data sizes): every rank raises it, and
    only rank 0 prints it."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def from_env(environ=None) -> World:
    """The world torchrun describes in the environment; one process when WORLD_SIZE is unset or 1."""
    environ = os.environ if environ is None else environ
    if int(environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return SINGLE
    try:
        size = int(environ["WORLD_SIZE"])
        rank = int(environ["RANK"])
        local_rank = int(environ.get("LOCAL_RANK", rank))
        local_size = int(environ.get("LOCAL_WORLD_SIZE", size))
    except (KeyError, ValueError) as exc:
        raise InputError(f"torch.distributed environment: WORLD_SIZE is set but {exc} is missing or not an "
                         "integer (start the processes with torchrun)") from None
    if not 0 <= rank < size:
        raise InputError(f"torch.distributed environment: RANK {rank} is outside WORLD_SIZE {size}")
    return World(rank, size, local_rank, max(1, local_size))


DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Placement:
    """Where this rank trains and the torch.distributed backend that carries its tensors."""

    device: str = "cpu"    # "cpu", or "cuda:<local rank>"
    backend: str = "gloo"  # init_process_group's backend string

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


ON_CPU = Placement()
NCCL = "cpu:gloo,cuda:nccl"  # CUDA tensors over NCCL; the CPU bookkeeping tensors over gloo


def placement(world: World, device: str = "cpu", cuda_devices: int | None = None) -> Placement:
    """The device and backend for `device` ("cpu" or "cuda"): gloo on CPU; on CUDA, NCCL with rank r
    of a machine on cuda:r. cuda_devices: how many CUDA devices torch sees (default: asked of torch).
    Asking for CUDA where there is none, or for more processes per machine than GPUs, is one line."""
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return ON_CPU
    count = _cuda_devices() if cuda_devices is None else cuda_devices
    if count < 1:
        raise InputError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False), and the "
                         "NCCL backend needs one; train with --device cpu (gloo) or install a CUDA build of torch")
    if world.local_rank >= count:
        raise InputError(f"--device cuda: local rank {world.local_rank} would train on cuda:{world.local_rank}, "
                         f"but torch sees {count} CUDA device(s): start at most {count} processes per machine")
    return Placement(f"cuda:{world.local_rank}", NCCL)


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def threads_per_process(world: World, threads: int) -> int:
    """The machine's threads shared among the processes on it (at least one each)."""
    return max(1, threads // world.local_size) if world.distributed else threads


def start(world: World, where: Placement = ON_CPU) -> None:
    """Join the process group (torchrun's rendezvous: MASTER_ADDR/MASTER_PORT from the environment)
    on the backend `where` chose, with this rank's GPU made the current one for NCCL."""
    if not world.distributed:
        return
    import torch
    import torch.distributed as dist

    if where.cuda:
        torch.cuda.set_device(torch.device(where.device))
    if not dist.is_initialized():
        dist.init_process_group(backend=where.backend, rank=world.rank, world_size=world.size)


def stop(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def check_same(world: World, values: dict[str, int]) -> None:
    """Every rank must see the same `values` (sample counts): else WorldMismatch on every rank."""
    if not world.distributed:
        return
    import torch
    import torch.distributed as dist

    mine = torch.tensor(list(values.values()), dtype=torch.int64)
    every = [torch.zeros_like(mine) for _ in range(world.size)]
    dist.all_gather(every, mine)
    for rank, theirs in enumerate(every):
        for (what, expected), got in zip(values.items(), theirs.tolist()):
            if got != expected:
                raise WorldMismatch(f"rank {rank} sees {got} samples of {what}, rank {world.rank} sees {expected}: "
                                    "every process of a torchrun world must be given the same data")


def shard(world: World, count: int, seed: int) -> np.ndarray:
    """This rank's sample indices: a seeded permutation dealt out like torch's DistributedSampler,
    padded by repeating its first samples so every rank holds the same number (equal step counts)."""
    if not world.distributed:
        return np.arange(count)
    order = np.random.default_rng(seed).permutation(count)
    per_rank = -(-count // world.size)
    order = np.resize(order, per_rank * world.size)  # repeats from the start to fill the last round
    return np.sort(order[world.rank::world.size])


def local_batch(world: World, batch_size: int) -> int:
    """The per-rank share of the effective batch."""
    if batch_size % world.size:
        raise InputError(f"batch size {batch_size} is the effective batch over {world.size} processes: it must be "
                         f"a multiple of {world.size}")
    return batch_size // world.size


def wrap(world: World, module, device=None):
    """The module under DistributedDataParallel (gradients averaged across ranks in backward), already
    on `device`: on a GPU, DDP is told its one device, so NCCL carries the gradients."""
    if not world.distributed:
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device("cpu" if device is None else device)
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def average_gradients(world: World, params) -> None:
    """Average the gradients of parameters outside the DDP module (feature adapters) across ranks."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world.size)


def broadcast_flag(world: World, value: bool) -> bool:
    """Rank 0's `value` on every rank (the best-epoch decision, made where validation runs)."""
    if not world.distributed:
        return value
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if value else 0], dtype=torch.int64)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def sum_across(world: World, sums: dict[str, float]) -> dict[str, float]:
    """Per-key totals over every rank (the epoch's loss sums, for rank 0's log line)."""
    if not world.distributed or not sums:
        return sums
    import torch
    import torch.distributed as dist

    keys = sorted(sums)
    total = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(total)
    return dict(zip(keys, total.tolist()))
