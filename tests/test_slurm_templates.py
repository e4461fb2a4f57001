"""The sbatch templates of recipes/slurm/, run for real under stand-ins for sbatch, srun and scontrol.

`bash TEMPLATE` (no job yet) must create logs/ and submit itself; the stand-in sbatch then runs it as the batch shell
of a job, its output appended to the template's `#SBATCH --output` file (a missing folder fails, as under Slurm); the
stand-in srun starts the job step's tasks and, like srun, passes the signals it gets on to them; the stand-in
scontrol records a requeue. The tiny EDM recipe trains on the CPU until USR2 reaches the batch shell, the way
`--signal=B:USR2@120` delivers it; the chain must end with exit 3, a checkpoint in the run folder and one requeue.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsg.io.checkpoint import list_states

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "recipes" / "slurm"
TEMPLATES = sorted(p.name for p in SLURM.glob("*.sbatch"))

STANDIN_SBATCH = r"""#!/bin/bash
# stand-in sbatch: runs the job script in the foreground as the batch shell of job $STANDIN_JOB_ID, its output appended
# to the file its #SBATCH --output line names (which fails, as under Slurm, when the folder is missing)
script=$1; shift
opt() { sed -n "s/^#SBATCH --$1=\([^ ]*\).*/\1/p" "$script" | head -n 1; }
export SLURM_JOB_ID=$STANDIN_JOB_ID SLURM_JOB_NAME=$(opt job-name) SLURM_JOB_NODELIST=localhost SLURM_NNODES=1 \
  SLURM_NTASKS=$STANDIN_NTASKS SLURM_GPUS_ON_NODE=$STANDIN_GPUS SLURM_SUBMIT_DIR=$PWD SLURM_RESTART_COUNT=0
out=$(opt output); out=${out//%x/$SLURM_JOB_NAME}; out=${out//%j/$SLURM_JOB_ID}
exec bash "$script" "$@" >>"$out" 2>&1
"""

STANDIN_SRUN = r"""#!/bin/bash
# stand-in srun: $STANDIN_NTASKS tasks of job step 0 on this node; like srun it passes the signals it gets on to
# every task and returns the highest exit code of its tasks
while [[ $1 == -* ]]; do shift; done      # srun's options (the templates write them as --name or --name=value)
n=${STANDIN_NTASKS:-1}
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=$n "$@" &
  pids+=($!)
done
for sig in USR1 USR2 TERM INT; do trap "kill -s $sig ${pids[*]} 2>/dev/null" $sig; done
status=0
for p in "${pids[@]}"; do
  while :; do wait "$p" && rc=0 || rc=$?; kill -0 "$p" 2>/dev/null || break; done
  (( rc > status )) && status=$rc
done
exit $status
"""

STANDIN_SCONTROL = r"""#!/bin/bash
# stand-in scontrol: `show hostnames LIST` prints a plain comma-separated list one host a line; the rest is recorded
if [[ $1 == show && $2 == hostnames ]]; then tr , '\n' <<< "$3"; exit 0; fi
echo "$*" >> "$STANDIN_RECORD"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_id_for_free_port() -> int:
    """A job id whose port (the templates' 15000 + id % 20000) is free now."""
    for _ in range(50):
        port = free_port()
        if 15000 <= port < 35000:
            return 700000 + port - 15000
    return 700000 + os.getpid() % 20000


def job_folder(tmp_path: Path, template: str) -> Path:
    """The template with the tiny CPU recipe in place of its fsg command, and the stand-ins on PATH."""
    text = (SLURM / template).read_text()
    fsg = (f"FSG=(train-diffusion --recipe {REPO / 'recipes/tiny/edm_toy.yaml'} --run-dir run --device cpu "
           f"--set train.log_every=5)")
    text, n = re.subn(r"^FSG=\(.*\)$", fsg, text, flags=re.MULTILINE)
    assert n == 1, f"{template}: one FSG=(...) line expected"
    (tmp_path / template).write_text(text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [("sbatch", STANDIN_SBATCH), ("srun", STANDIN_SRUN), ("scontrol", STANDIN_SCONTROL)]:
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return tmp_path


def environment(tmp_path: Path, ntasks: int, gpus: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PET_", "TORCHELASTIC_")) and k not in
           ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PATH=f"{tmp_path / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               STANDIN_JOB_ID=str(job_id_for_free_port()), STANDIN_NTASKS=str(ntasks), STANDIN_GPUS=str(gpus),
               STANDIN_RECORD=str(tmp_path / "scontrol.log"), OMP_NUM_THREADS="1", FSG_THREADS="1",
               FSG_PROGRESS_INTERVAL="1", CUDA_VISIBLE_DEVICES="")
    return env


def run_until_preempted(template: str, tmp_path: Path, ntasks: int = 1, gpus: int = 1, timeout: float = 150):
    """Submit with `bash TEMPLATE`, send USR2 to the batch shell once training logs its first metrics, wait."""
    folder = job_folder(tmp_path, template)
    env = environment(folder, ntasks, gpus)
    shell = subprocess.Popen(["bash", template], cwd=folder, env=env, start_new_session=True)
    log = folder / "logs" / f"fsg-{env['STANDIN_JOB_ID']}.out"
    metrics = folder / "run" / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    try:
        while not metrics.exists():
            text = log.read_text() if log.exists() else ""
            assert shell.poll() is None, f"ended with {shell.returncode} before training:\n{text}"
            assert time.monotonic() < deadline, "no metrics line in time"
            time.sleep(0.2)
        shell.send_signal(signal.SIGUSR2)
        code = shell.wait(timeout=max(deadline - time.monotonic(), 30))
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
    return code, folder, log.read_text()


def check_preempted(code: int, folder: Path, log: str, job_id: str | None = None) -> None:
    assert code == 3, log
    states = list_states(folder / "run" / "checkpoints")
    assert states and states[-1][0] > 0, log
    last = json.loads((folder / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == states[-1][0]                         # the stopped attempt's last step has its line
    assert json.loads((folder / "run" / "run.json").read_text())["stopped_by"] == "signal SIGUSR2"
    assert "forwarding it to the job step" in log
    assert "stopped by signal SIGUSR2" in log, log
    requeues = (folder / "scontrol.log").read_text().splitlines()
    assert len(requeues) == 1 and re.fullmatch(r"requeue \d+", requeues[0]), requeues


def test_templates_ask_slurm_for_the_preemption_chain():
    """Every template: the signal to the batch shell, requeue, appended logs, srun --unbuffered, self-submission."""
    assert set(TEMPLATES) >= {"torchrun_1node.sbatch", "torchrun_multinode.sbatch", "srun_multinode.sbatch"}
    for name in TEMPLATES:
        text = (SLURM / name).read_text()
        for line in ("#SBATCH --signal=B:USR2@", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                     "#SBATCH --output=logs/", "trap 'forward USR2' USR2", "srun --unbuffered",
                     "mkdir -p logs; exec sbatch", "--resume auto --requeue"):
            assert line in text, f"{name}: {line}"
        if re.search(r"^srun .*\btorchrun ", text, re.MULTILINE):
            assert "--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2" in text, name


def test_srun_template_checkpoints_and_requeues_on_usr2(tmp_path):
    """One task: the fastest whole chain (batch shell -> srun -> fsg), under ~20 s."""
    code, folder, log = run_until_preempted("srun_multinode.sbatch", tmp_path, ntasks=1)
    check_preempted(code, folder, log)


@pytest.mark.slow
@pytest.mark.parametrize("template,ntasks,gpus", [("srun_multinode.sbatch", 2, 1), ("torchrun_1node.sbatch", 1, 2),
                                                   ("torchrun_multinode.sbatch", 1, 2)])
def test_template_checkpoints_and_requeues_on_usr2(tmp_path, template, ntasks, gpus):
    """Two ranks (two srun tasks, or one torchrun with two workers): every rank stops, one checkpoint, one requeue."""
    code, folder, log = run_until_preempted(template, tmp_path, ntasks=ntasks, gpus=gpus)
    check_preempted(code, folder, log)
    assert "2 processes (gloo, DDP)" in log, log
