"""The training engine end to end on a tiny toy recipe: exact resume after SIGKILL, preemption by signal,
non-finite loss, two processes (torchrun-style and Slurm-style) against one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fsg.errors import EXIT_NONFINITE, EXIT_PREEMPTED
from fsg.train.dist import first_host, slurm_to_torch_env
from fsg.train.engine import lr_factor
from fsg.train.recipe import TrainConfig

RECIPE = """
data: {{source: "toy:moons", toy_size: 4096}}
network: {{arch: mlp, hidden: 32, depth: 2, emb_dim: 16, dropout: 0.1}}
method: {{name: diffusion}}
process: {{name: edm}}
train: {{batch_size: 64, max_steps: {steps}, lr: 1e-3, ema: [0.9], log_every: 1, ckpt_every: {ckpt}, seed: 3}}
sample: {{grid: 16}}
"""


def recipe(tmp_path, steps=60, ckpt=10):
    p = tmp_path / "tiny.yaml"
    p.write_text(RECIPE.format(steps=steps, ckpt=ckpt))
    return p


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        e.pop(k, None)
    return e


def fsg(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fsg", *map(str, args)], capture_output=True, text=True, env=kw.pop("env", env()), **kw)


def popen(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fsg", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=kw.pop("env", env()), **kw)


def weights(run):
    return load_file(str(Path(run) / "model.safetensors"))


def final_state(run):
    states = sorted((Path(run) / "checkpoints").glob("state-*.pt"))
    return torch.load(states[-1], weights_only=True)


def assert_same_run(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = final_state(a), final_state(b)
    assert sa["step"] == sb["step"]
    for k in sa["nets"]["model"]:
        assert torch.equal(sa["nets"]["model"][k], sb["nets"]["model"][k]), k


def wait_for(path, proc, timeout=120):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    r = fsg("train-diffusion", "--recipe", recipe(tmp, steps=300), "--run-dir", tmp / "run", "--no-progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return tmp / "run", recipe(tmp, steps=300)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference_run, tmp_path):
    ref, rec = reference_run
    run = tmp_path / "run"
    proc = popen("train-diffusion", "--recipe", rec, "--run-dir", run, "--no-progress", "--device", "cpu")
    wait_for(run / "checkpoints" / "state-00000020.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    r = fsg("train-diffusion", "--recipe", rec, "--run-dir", run, "--resume", "auto", "--no-progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert_same_run(ref, run)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 300       # no duplicated lines after the resume


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGTERM"])
def test_signal_checkpoints_exits_3_and_resumes(reference_run, tmp_path, sig):
    ref, rec = reference_run
    run = tmp_path / "run"
    proc = popen("train-diffusion", "--recipe", rec, "--run-dir", run, "--no-progress", "--device", "cpu")
    wait_for(run / "checkpoints" / "state-00000010.pt", proc)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "continue with --resume auto" in err
    r = fsg("train-diffusion", "--recipe", rec, "--run-dir", run, "--resume", "auto", "--no-progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert_same_run(ref, run)


def test_time_budget_stops_with_exit_3(tmp_path):
    r = fsg("train-diffusion", "--recipe", recipe(tmp_path, steps=100000), "--run-dir", tmp_path / "run",
            "--time-budget", "1", "--no-progress", "--device", "cpu")
    assert r.returncode == EXIT_PREEMPTED, r.stderr
    assert list((tmp_path / "run" / "checkpoints").glob("state-*.pt"))


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
    r = fsg("train-diffusion", "--recipe", recipe(tmp_path, steps=50, ckpt=5), "--run-dir", tmp_path / "run",
            "--set", "train.lr=1e30", "--set", "train.optimizer=adamw", "--set", "process.P_mean=8.0", "--no-progress", "--device", "cpu")
    assert r.returncode == EXIT_NONFINITE, r.stderr
    assert "non-finite loss at step" in r.stderr
    for state in (tmp_path / "run" / "checkpoints").glob("state-*.pt"):
        s = torch.load(state, weights_only=True)
        assert all(torch.isfinite(v).all() for v in s["nets"]["model"].values())


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    rec = recipe(tmp_path, steps=150, ckpt=1000)
    one = fsg("train-diffusion", "--recipe", rec, "--run-dir", tmp_path / "one", "--no-progress", "--device", "cpu")
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "fsg", "train-diffusion", "--recipe", str(rec), "--run-dir", str(tmp_path / "two"),
                          "--no-progress", "--device", "cpu"], capture_output=True, text=True, env=env())
    assert two.returncode == 0, two.stderr
    assert "2 processes (gloo, DDP)" in two.stderr

    def losses(run):
        return torch.tensor([json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()])

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 150
    # same global batch and data order; only the per-rank noise draws differ: curves agree on average
    for lo, hi in ((0, 50), (50, 100), (100, 150)):
        assert abs(a[lo:hi].mean() - b[lo:hi].mean()) < 0.2 * a[lo:hi].mean()


@pytest.mark.slow
def test_torchrun_one_process_takes_the_ddp_path_and_matches_a_plain_run(tmp_path):
    """torchrun --nproc_per_node 1 makes a process group and wraps the nets in DDP (the path a one-GPU machine
    can check with nccl); one rank's all-reduce is the identity, so the weights equal those of a plain run."""
    from safetensors.torch import load_file

    rec = recipe(tmp_path, steps=8, ckpt=1000)
    plain = fsg("train-diffusion", "--recipe", rec, "--run-dir", tmp_path / "plain", "--no-progress", "--device", "cpu")
    assert plain.returncode == 0, plain.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                          "-m", "fsg", "train-diffusion", "--recipe", str(rec), "--run-dir", str(tmp_path / "ddp"),
                          "--no-progress", "--device", "cpu"], capture_output=True, text=True, env=env())
    assert ddp.returncode == 0, ddp.stderr
    assert "1 process (gloo, DDP)" in ddp.stderr
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_slurm_variables_form_one_job(tmp_path):
    rec = recipe(tmp_path, steps=5, ckpt=1000)
    procs = []
    for rank in range(2):
        e = env()
        e.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_ID="4242",
                 SLURM_JOB_NODELIST="localhost", MASTER_PORT=str(29500 + os.getpid() % 1000))
        procs.append(popen("train-diffusion", "--recipe", rec, "--run-dir", tmp_path / "run", "--no-progress",
                           "--device", "cpu", env=e))
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 processes (gloo, DDP)" in outs[0][1]
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_slurm_mapping_and_nodelist():
    assert first_host("gpu[03-05,07],cpu1") == "gpu03"
    assert first_host("a1,a2") == "a1"
    assert first_host("node7") == "node7"
    e = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "n[10-11]", "SLURM_JOB_ID": "123"}
    assert slurm_to_torch_env(e)
    assert (e["RANK"], e["WORLD_SIZE"], e["LOCAL_RANK"], e["MASTER_ADDR"], e["MASTER_PORT"]) == ("3", "8", "1", "n10", "15123")
    assert not slurm_to_torch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})


def test_lr_schedule_by_hand():
    t = TrainConfig(lr=1.0, warmup_steps=10, lr_decay="cosine", max_steps=110, lr_decay_steps=100)
    assert lr_factor(0, t) == pytest.approx(0.1)              # (0 + 1) / 10 of the way up
    assert lr_factor(50, t) == pytest.approx(0.5)             # cos(pi/2): half way down
    t = TrainConfig(lr=2.0, lr_decay="poly", lr_poly_power=1.0, max_steps=100, min_lr=0.5)
    assert lr_factor(50, t) == pytest.approx(0.5) and lr_factor(99, t) == pytest.approx(0.25)   # floored at min_lr/lr
    t = TrainConfig(lr=1.0, lr_decay="inv_sqrt", lr_decay_steps=100)
    assert lr_factor(50, t) == 1.0 and lr_factor(400, t) == pytest.approx(0.5)


def test_bare_cuda_means_the_local_ranks_gpu(monkeypatch):
    """Under torchrun/Slurm, `--device cuda` (no index) must give each process its own GPU: DDP and
    torch.cuda.set_device need an index (found on an H100 under torchrun)."""
    from fsg.train.dist import resolve_device
    from fsg.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert resolve_device("cuda") == torch.device("cuda", 3)
    with pytest.raises(UserError, match="4 CUDA device"):
        resolve_device("cuda:7")
    assert resolve_device("cpu") == torch.device("cpu")
