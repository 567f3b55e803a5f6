"""Real process groups for the distributed tests: spawn N processes joined over gloo on loopback,
run a function on every rank, and hand back what each rank returned (or raised).

Every collective has a deadline (the group's timeout) and the parent gives up on the processes
after `timeout` seconds, so a broken exchange fails a test instead of hanging CI.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, outdir, group_timeout):
    import torch.distributed as dist

    torch.set_num_threads(1)  # N ranks share this machine's cores
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=group_timeout),
        )  # fmt: skip
        try:
            result = ("ok", fn(rank, world, *args))
        except Exception as err:  # noqa: BLE001 — handed to the parent, which decides
            result = ("raised", (type(err).__name__, str(err), traceback.format_exc()))
        dist.destroy_process_group()
    except Exception as err:  # noqa: BLE001
        result = ("crashed", (type(err).__name__, str(err), traceback.format_exc()))
    torch.save(result, os.path.join(outdir, f"{rank}.pt"))


def run_ranks(fn, world: int, *args, timeout: float = 120.0, group_timeout: float = 30.0) -> list:
    """[(status, value) per rank]: status "ok" with fn(rank, world, *args)'s value, or "raised"
    with (exception type name, message, traceback). A rank that never reports fails the test."""
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.get_context("spawn")
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, outdir, group_timeout)) for r in range(world)]
        for p in procs:
            p.start()
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        for p in procs:
            p.join(max(0.0, (deadline - datetime.datetime.now()).total_seconds()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        if hung:
            raise AssertionError(f"ranks {hung} of {world} did not finish within {timeout} s (a hung collective?)")
        out = []
        for r in range(world):
            path = os.path.join(outdir, f"{r}.pt")
            if not os.path.exists(path):
                raise AssertionError(f"rank {r} exited with code {procs[r].exitcode} without a result")
            status, value = torch.load(path, weights_only=False)
            if status == "crashed":
                raise AssertionError(f"rank {r} crashed outside the test function:\n{value[2]}")
            out.append((status, value))
        return out


def values(results: list) -> list:
    """Each rank's value; a rank that raised fails with its traceback."""
    for r, (status, value) in enumerate(results):
        if status != "ok":
            raise AssertionError(f"rank {r} raised:\n{value[2]}")
    return [v for _, v in results]
