"""Multi-process training: the process group a `torchrun` launch asks for, the rank's slice of a
global batch, and the few collectives the trainer needs besides the loss's own.

Without torchrun (no RANK/WORLD_SIZE in the environment, or WORLD_SIZE=1) `setup` returns the
single-process `Dist` and nothing here runs a collective: the trainer's path is unchanged.

A program that calls train() several times under one launch (a sweep) should create the process
group itself: train() then uses it and leaves it alone. Groups created and destroyed one after
another on the same MASTER_PORT can race — a rank that starts the next rendezvous while rank 0
still serves the last one's store reads stale addresses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as td

from srem_kernels import distributed
from srem_kernels.distributed import collective_device

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank r of `world` ranks; `group` is None in a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: td.ProcessGroup | None = None
    owned: bool = False  # the trainer created the group and destroys it at the end

    @property
    def main(self) -> bool:
        """Rank 0 alone prints and writes files."""
        return self.rank == 0

    def local(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch of indices: the slices concatenated in
        rank order are the global batch, sizes differing by at most one."""
        return idx if self.group is None else idx.tensor_split(self.world)[self.rank]

    def sizes(self, n: int) -> list[int]:
        """The sizes of the ranks' slices of a global batch of n (as `local` cuts it)."""
        return [len(t) for t in torch.arange(n).tensor_split(self.world)]


def launched() -> bool:
    """True under torchrun (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(v in os.environ for v in LAUNCH_VARS)


def device_for(requested: str) -> torch.device:
    """The training device: `auto` = CUDA if available; under a launcher a CUDA device is the
    local rank's GPU (one process per GPU)."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested)
    if dev.type == "cuda" and dev.index is None and launched() and int(os.environ["WORLD_SIZE"]) > 1:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def setup(device: torch.device, timeout_s: float) -> Dist:
    """The process group of a torchrun launch: gloo on CPU, NCCL on CUDA, with a timeout so a
    collective that a rank never joins raises instead of hanging. A group that already exists
    (a program that set up torch.distributed itself) is used as it is and left to its owner."""
    if td.is_available() and td.is_initialized():
        if td.get_world_size() == 1:
            return Dist()
        return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), td.group.WORLD)
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist()
    if not td.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build; launch without torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    td.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                          **({"device_id": device} if device.type == "cuda" else {}))
    return Dist(td.get_rank(), td.get_world_size(), int(os.environ["LOCAL_RANK"]), td.group.WORLD, owned=True)


def teardown(d: Dist) -> None:
    if d.owned and td.is_initialized():
        td.destroy_process_group()


def merge_rows(local: torch.Tensor, d: Dist) -> torch.Tensor:
    """A vector indexed by training pair in which each rank filled only its own pairs (zeros
    elsewhere): the sum over ranks, which is exact (x + 0 = x), so every rank gets the same bits."""
    if d.group is None:
        return local
    dev = collective_device(d.group)
    out = local.to(dev)
    td.all_reduce(out, group=d.group)
    return out.to(local.device)


def agree(value: int, d: Dist) -> bool:
    """Whether every rank holds the same integer (e.g. the epoch its checkpoint resumes from)."""
    if d.group is None:
        return True
    dev = collective_device(d.group)
    t = torch.tensor([value, -value], dtype=torch.int64, device=dev)
    td.all_reduce(t, op=td.ReduceOp.MAX, group=d.group)
    return int(t[0]) == value and int(t[1]) == -value


def gather_rows(x: torch.Tensor, d: Dist, sizes: list[int]) -> torch.Tensor:
    """The global batch's rows (all ranks' `x`, concatenated in rank order; rank r has sizes[r]
    rows), with this rank's own rows in place as `x` itself so autograd reaches them; the other
    ranks' rows carry no gradient."""
    every = distributed.gather_rows(x.detach(), distributed.Layout(tuple(sizes), d.rank), d.group)
    lo = sum(sizes[: d.rank])
    return torch.cat([every[:lo], x, every[lo + sizes[d.rank] :]])
