"""Distributed setup: the same command runs alone, under torchrun, or under Slurm srun.

Resolution order: RANK/WORLD_SIZE (torchrun or a user export) -> SLURM_PROCID/SLURM_NTASKS (srun, one
task per GPU) -> a single process without a process group. Under torchrun the process group is made even
for one process (`--nproc_per_node 1`), so the DDP path is the same code at every world size and can be
checked on a one-GPU machine. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fsg.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False     # a process group exists (the nets are wrapped in DDP)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: 'gpu[03-05,07],cpu1' -> 'gpu03', 'a1,a2' -> 'a1'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def slurm_to_torch_env(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Map SLURM_* variables of an srun task to RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; True if mapped."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return False
    if "SLURM_PROCID" not in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = environ["SLURM_NTASKS"]
    environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in environ:
        environ["MASTER_ADDR"] = first_host(environ.get("SLURM_JOB_NODELIST", "127.0.0.1"))
    if "MASTER_PORT" not in environ:
        environ["MASTER_PORT"] = str(15000 + int(re.sub(r"\D", "", environ.get("SLURM_JOB_ID", "0")) or 0) % 20000)
    return True


def init_distributed(device: torch.device) -> DistEnv:
    """Initialise the process group under torchrun (any world size) or a Slurm job of several tasks; no-op for
    a plain single process."""
    slurm_to_torch_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        return DistEnv()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistEnv(rank, world, local, group=True)


def all_reduce_max(value: float, device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU. 'auto' and a bare 'cuda' mean the local rank's GPU under
    torchrun/Slurm (cuda:LOCAL_RANK), so every process of a job gets its own GPU; 'cuda:N' is taken as given."""
    def local_gpu() -> torch.device:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))))

    if device == "auto":
        return local_gpu() if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device: unknown device '{device}' (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        return local_gpu()
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
