"""Process-wide settings of a run: how many CPU threads torch (and the BLAS libraries) use.

torch's default (one thread per core) collapses on a machine that other jobs load: its OpenMP threads spin while
they wait for each other and for cores the other jobs hold (issue #18 measured 0.7 it/s against 8.8 with one
thread). The thread count is, first match wins:

1. `--threads N` or $FSG_THREADS;
2. $OMP_NUM_THREADS, when set (torch reads it too, and torchrun sets it to 1 for several workers);
3. fsg's default: the cores this process may use, less the ones other jobs keep busy, split between the ranks of
   this node ($LOCAL_WORLD_SIZE under torchrun), at least 1 (`default_threads`).

The cores this process may use are its CPU affinity, capped by a cgroup CPU quota (`docker --cpus`, Kubernetes
limits) and by Slurm's allocation ($SLURM_CPUS_ON_NODE, $SLURM_CPUS_PER_TASK). Cores held for this job (an affinity
narrower than the machine: a Slurm cpuset, `taskset`, `docker --cpuset-cpus`; or a Slurm allocation) all count as
free, whatever other jobs do on the other cores; otherwise the 1-minute load average says how many cores other
jobs keep busy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from fsg.errors import UserError

THREADS_ENV = "FSG_THREADS"
BLAS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota, in cores, of this process's cgroup and its parents (cgroup v2 `cpu.max`, v1
    `cpu.cfs_quota_us / cpu.cfs_period_us`); None when there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    limits = []
    for line in lines or ["0::/"]:
        _, controllers, rel = line.split(":", 2)
        v2 = controllers == ""
        if not (v2 or "cpu" in controllers.split(",")):
            continue
        base = root if v2 else root / "cpu"
        folder = base / rel.lstrip("/")
        for d in [folder, *folder.parents]:          # a container sees its own cgroup at the root of the mount
            limits.append(_quota(d, v2))
            if d == base:
                break
    limits = [q for q in limits if q is not None]
    return min(limits) if limits else None


def _quota(folder: Path, v2: bool) -> float | None:
    try:
        if v2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # macOS, Windows
        return os.cpu_count() or 1


def default_threads(cores: int | None = None, load: float | None = None, local_world: int | None = None, *,
                    online: int | None = None, quota: float | None | bool = False,
                    environ: dict[str, str] | os._Environ | None = None) -> int:
    """The idle cores, split between this node's ranks: max(1, (usable - busy) // ranks), where

    usable = min(affinity `cores`, ceil(cgroup `quota`), $SLURM_CPUS_ON_NODE, $SLURM_CPUS_PER_TASK);
    busy   = 0 when the cores are held for this job (an affinity narrower than the `online` CPUs, or a Slurm
             allocation), else the 1-minute `load` average scaled to the usable share of the machine (the load
             spreads over all online CPUs), rounded to the nearest core;
    ranks  = `local_world` ($LOCAL_WORLD_SIZE under torchrun), else 1.

    Each argument left at None (`quota`: False) is read from the system; `environ` defaults to os.environ.
    """
    environ = os.environ if environ is None else environ
    affinity = available_cores() if cores is None else cores
    online = (os.cpu_count() or affinity) if online is None else online
    quota = cgroup_cpu_limit() if quota is False else quota
    usable = affinity if quota is None else min(affinity, max(1, math.ceil(quota)))
    slurm = [int(v) for v in (environ.get("SLURM_CPUS_ON_NODE", ""), environ.get("SLURM_CPUS_PER_TASK", ""))
             if v.isdigit() and int(v) > 0]
    usable = min([usable, *slurm])
    busy = 0
    if affinity >= online and not slurm:
        if load is None:
            try:
                load = os.getloadavg()[0]
            except (AttributeError, OSError):       # Windows
                load = 0.0
        busy = max(0, math.floor(load * usable / max(online, 1) + 0.5))
    ranks = int(local_world if local_world is not None else (environ.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, (usable - busy) // max(1, ranks))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op and inter-op threads: `threads`, else $FSG_THREADS, else $OMP_NUM_THREADS, else
    `default_threads()`; returns the number. The BLAS libraries (numpy's, MKL) size their pools from the
    environment when they load, so the number goes there too (an explicit number overrides, a default fills in)."""
    if threads is None and os.environ.get(THREADS_ENV):
        threads = _positive_env(THREADS_ENV)
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    explicit = threads is not None
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        threads = _positive_env("OMP_NUM_THREADS")
    n = threads if threads is not None else default_threads()
    for name in BLAS_ENV:
        if explicit or not os.environ.get(name):
            os.environ[name] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:      # possible only once per process, before the first inter-op work
        pass
    return n


def _positive_env(name: str) -> int:
    raw = os.environ[name]
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"${name}: expected a positive integer, got '{raw}'")
    return value
