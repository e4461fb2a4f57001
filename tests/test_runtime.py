"""CPU threads (fsg.runtime): the default from idle cores, the order of the settings, and the cgroup quota.

Expected counts are worked out by hand from the rule in `default_threads`' docstring:
max(1, (usable - round(load * usable / online)) // ranks), busy = 0 for cores held for the job.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fsg import runtime
from fsg.errors import UserError
from fsg.runtime import cgroup_cpu_limit, configure_threads, default_threads


def threads(cores, load, online=None, quota=None, world=None, **env):
    return default_threads(cores, load, world, online=cores if online is None else online, quota=quota, environ=env)


@pytest.mark.parametrize("load,want", [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (2.0, 1), (5.1, 1)])
def test_two_cores_give_up_the_cores_other_jobs_load(load, want):
    # 2 cores: round(load) of them are busy, at least one thread
    assert threads(2, load) == want


def test_ranks_on_a_node_split_the_idle_cores():
    assert threads(8, 3.4, world=2) == 2                     # (8 - 3) // 2
    assert threads(8, 0.0, world=3) == 2                     # 8 // 3
    assert threads(8, 7.0, world=4) == 1                     # (8 - 7) // 4 = 0 -> at least 1
    assert threads(8, 0.0, LOCAL_WORLD_SIZE="4") == 2        # torchrun's variable when no number is given


def test_cores_held_for_the_job_ignore_the_machine_load():
    # a cpuset of 4 of 64 CPUs (Slurm, taskset): other jobs' load runs on the other 60
    assert threads(4, 60.0, online=64) == 4
    # a Slurm allocation without a cpuset: its CPUs are ours, capped by the allocation
    assert threads(64, 50.0, SLURM_CPUS_PER_TASK="8") == 8
    assert threads(64, 50.0, SLURM_CPUS_ON_NODE="16") == 16
    assert threads(64, 50.0, world=4, SLURM_CPUS_PER_TASK="64", LOCAL_WORLD_SIZE="8") == 16   # world wins over env


def test_a_cgroup_quota_caps_the_cores_and_takes_its_share_of_the_load():
    # 64 CPUs visible, a quota of 2.5 cores: usable ceil(2.5) = 3; busy round(16 * 3 / 64) = round(0.75) = 1
    assert threads(64, 16.0, quota=2.5) == 2
    assert threads(64, 0.0, quota=2.5) == 3
    assert threads(64, 60.0, quota=2.5) == 1                 # round(2.81) = 3 busy -> at least 1


def test_the_default_reads_the_load_average(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    for key in ("LOCAL_WORLD_SIZE", "SLURM_CPUS_ON_NODE", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 1.0, 0.5))
    assert default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 1.0, 0.5))
    assert default_threads() == 2


def test_cgroup_quota_v2_v1_and_parents(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "cpu.max").write_text("100000 100000\n")          # the parent: 1 core
    (v2 / "job" / "step" / "cpu.max").write_text("300000 100000\n")  # the process's own: 3 cores
    proc = tmp_path / "cgroup2"
    proc.write_text("0::/job/step\n")
    assert cgroup_cpu_limit(v2, proc) == 1.0                         # the tightest along the path
    (v2 / "job" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, proc) == 3.0
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/x\n1:cpu,cpuacct:/docker/abc\n0::/\n")   # a container sees its cgroup at the root
    assert cgroup_cpu_limit(v1, proc) == 1.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1, proc) is None
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "missing") is None


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("FSG_THREADS", *runtime.BLAS_ENV):
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    torch.set_num_threads(1)


def test_order_of_the_settings(clean_env):
    clean_env.setattr(runtime, "default_threads", lambda: 3)
    assert configure_threads() == 3 and torch.get_num_threads() == 3
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"
    clean_env.setenv("OMP_NUM_THREADS", "2")
    clean_env.setenv("MKL_NUM_THREADS", "5")                   # a user's own BLAS setting stays
    assert configure_threads() == 2 and os.environ["MKL_NUM_THREADS"] == "5"
    clean_env.setenv("FSG_THREADS", "1")
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    assert configure_threads(4) == 4 and torch.get_num_threads() == 4
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "4"   # an explicit number goes everywhere


@pytest.mark.parametrize("name,value", [("FSG_THREADS", "0"), ("FSG_THREADS", "two"), ("OMP_NUM_THREADS", "-1")])
def test_bad_thread_settings_are_refused_by_name(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(UserError, match=rf"\${name}: expected a positive integer, got '{value}'"):
        configure_threads()


def test_threads_option_on_the_command_line():
    env = {k: v for k, v in os.environ.items() if k != "FSG_THREADS"}
    bad = subprocess.run([sys.executable, "-m", "fsg", "recipe", "show", "tiny/edm_toy", "--threads", "0"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == "fsg: error: --threads must be at least 1, got 0", bad.stderr
