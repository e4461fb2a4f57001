"""Run folders: one writer (a lock), nothing overwritten without --overwrite, resume past broken states, config.yaml
only after the state loaded, metrics.jsonl cut to the resumed step atomically, stale temporaries removed."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsg.app.train import train
from fsg.errors import UserError
from fsg.io.checkpoint import MODEL_FILE, list_states, save_model
from fsg.train.runfolder import LOCK_FILE, RunLock, truncate_metrics
from tests.helpers import tiny_model

FAST = ["train.batch_size=32", "network.hidden=16", "network.depth=1", "sample.grid=16", "sample.steps=2",
        "train.log_every=1", "data.toy_size=256"]


def run(run_dir, max_steps=2, extra=(), **kw):
    return train("train-diffusion", "tiny/edm_toy", [*FAST, *extra], run_dir=run_dir, device="cpu",
                 max_steps=max_steps, progress=False, **kw)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------- never overwritten

def test_a_fresh_run_refuses_a_folder_holding_a_run_and_overwrite_moves_it_aside(tmp_path):
    r = tmp_path / "run"
    run(r)
    before = snapshot(r)
    with pytest.raises(UserError, match=r"already holds a run \(model\.safetensors, config\.yaml.*--resume auto.*--overwrite"):
        run(r)
    assert snapshot(r) == before
    run(r, overwrite=True)
    aside = next(r.glob("replaced-*"))
    assert {k: v for k, v in snapshot(aside).items() if k != LOCK_FILE} == \
        {k: v for k, v in before.items() if not k.startswith(LOCK_FILE)}         # every byte kept, moved aside
    assert (r / MODEL_FILE).is_file() and steps(r) == [1, 2]


def test_a_folder_with_only_a_model_is_never_trained_over(tmp_path):
    """The output of `fsg convert` (a model, no training state): a fresh run and --resume auto both refuse."""
    m = tiny_model()
    save_model(tmp_path / MODEL_FILE, m.denoiser.net.state_dict(), m.meta)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="already holds a run"):
        run(tmp_path)
    with pytest.raises(UserError, match=r"--resume auto: .* holds model\.safetensors but no training state"):
        run(tmp_path, resume="auto")
    with pytest.raises(UserError, match="give one of them"):
        run(tmp_path, resume="auto", overwrite=True)
    assert snapshot(tmp_path) == before


def test_resume_auto_on_a_missing_folder_says_it_starts_fresh(tmp_path, capsys):
    run(tmp_path / "new", resume="auto")
    assert "--resume auto: " + str(tmp_path / "new") + " does not exist; starting a fresh run" in capsys.readouterr().err
    assert steps(tmp_path / "new") == [1, 2]


def test_run_dir_that_is_a_file_or_unwritable_is_refused_before_work(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(UserError, match="is a file, not a folder"):
        run(tmp_path / "f")
    with pytest.raises(UserError, match="is a file, not a folder"):
        run(tmp_path / "f" / "sub")
    with pytest.raises(UserError, match="--run-dir /proc/fsg-run: cannot create the folder"):
        run(Path("/proc/fsg-run"))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:                       # root writes anywhere: show it the folder as another user sees it
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw))
    with pytest.raises(UserError, match=r"cannot write in .*locked \(permission denied"):
        run(locked / "run")
    assert (tmp_path / "f").read_text() == "mine" and not any(locked.iterdir())


def test_max_steps_below_one_is_refused(tmp_path):
    for bad in (0, -5):
        with pytest.raises(UserError, match=f"--max-steps: must be at least 1, got {bad}"):
            run(tmp_path / "r", max_steps=bad)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ resume

def test_keep_ckpts_minus_one_keeps_every_state_and_n_keeps_the_last_n(tmp_path):
    run(tmp_path / "all", 4, ["train.ckpt_every=1", "train.keep_ckpts=-1"])
    assert [s for s, _ in list_states(tmp_path / "all" / "checkpoints")] == [1, 2, 3, 4]
    run(tmp_path / "two", 4, ["train.ckpt_every=1", "train.keep_ckpts=2"])
    assert [s for s, _ in list_states(tmp_path / "two" / "checkpoints")] == [3, 4]


def test_a_resume_with_another_network_is_one_line_and_changes_no_file(tmp_path):
    r = tmp_path / "run"
    run(r, 2, ["train.ckpt_every=1"])
    before = snapshot(r)
    with pytest.raises(UserError) as e:
        run(r, 4, ["train.ckpt_every=1", "network.hidden=24"], resume="auto")
    assert "weights do not fit the architecture" in str(e.value) and "\n" not in str(e.value)
    assert {k: v for k, v in snapshot(r).items() if k != LOCK_FILE} == {k: v for k, v in before.items() if k != LOCK_FILE}


def test_resume_auto_falls_back_past_a_truncated_state_and_cuts_the_metrics(tmp_path, capsys):
    r = tmp_path / "run"
    run(r, 3, ["train.ckpt_every=1", "train.keep_ckpts=-1"])
    newest = r / "checkpoints" / "state-00000003.pt"
    newest.write_bytes(newest.read_bytes()[:500])                                   # a kill in the middle of a save
    with open(r / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 1.0}\n{"step": 10, "lo')                        # a later attempt, a partial line
    capsys.readouterr()
    run(r, 4, ["train.ckpt_every=1", "train.keep_ckpts=-1"], resume="auto")
    err = capsys.readouterr().err
    assert "--resume auto: skipping unreadable training state: " + str(newest) in err
    assert "continuing from " + str(r / "checkpoints" / "state-00000002.pt") + " (step 2)" in err
    assert steps(r) == [1, 2, 3, 4]                                                  # 3 written again, 9 and 10 gone


def test_truncate_metrics_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    original = path.read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt                                                      # the process dies mid-rename
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        truncate_metrics(path, 3)
    assert path.read_bytes() == original and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    monkeypatch.undo()
    truncate_metrics(path, 3)
    assert path.read_text() == "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3))


def test_stale_temporaries_of_killed_saves_are_removed_at_start(tmp_path, capsys):
    r = tmp_path / "run"
    run(r, 2, ["train.ckpt_every=1"])
    stale = [r / ".model.safetensors.k3j9x0ab.tmp", r / "checkpoints" / ".state-00000003.pt.a1b2c3d4.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (r / ".notes.tmp").write_text("a user's file")                                   # not fsg's pattern: kept
    run(r, 3, ["train.ckpt_every=1"], resume="auto")
    assert not any(p.exists() for p in stale) and (r / ".notes.tmp").exists()
    assert "removed 2 temporary file(s)" in capsys.readouterr().err


def test_the_nonfinite_loss_message_names_a_checkpoint_that_exists(tmp_path):
    from fsg.train.engine import TrainingStopped

    with pytest.raises(TrainingStopped) as e:
        run(tmp_path / "r", 6, ["train.ckpt_every=2", "train.lr=1e30", "train.optimizer=adamw", "process.P_mean=8.0"])
    message = str(e.value)
    if "the last good checkpoint is " in message:
        assert Path(message.split("the last good checkpoint is ")[1]).is_file()
    else:
        assert "no checkpoint was written yet" in message and not list_states(tmp_path / "r" / "checkpoints")


# -------------------------------------------------------------------------------------------------- lock

def test_a_live_lock_is_refused_naming_its_holder(tmp_path):
    (tmp_path / "run").mkdir()
    held = RunLock(tmp_path / "run")                    # another run (another open file: flock conflicts)
    try:
        with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on "):
            run(tmp_path / "run")
    finally:
        held.release()
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""                         # released cleanly: empty


def test_the_stale_lock_of_a_killed_run_is_taken_over_with_a_message(tmp_path, capsys):
    r = tmp_path / "run"
    r.mkdir()
    code = f"from fsg.train.runfolder import RunLock; RunLock({str(r)!r}); import os; os._exit(0)"   # dies holding it
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    dead = json.loads((r / LOCK_FILE).read_text())
    run(r)
    assert f"taking over the stale lock of a run that ended without releasing it (pid {dead['pid']}" in capsys.readouterr().err
    assert (r / LOCK_FILE).read_text() == ""


def test_a_state_file_that_is_code_is_refused_by_resume(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path}/pwned",)

    evil = tmp_path / "state-00000001.pt"
    torch.save({"step": 1, "x": Payload()}, evil)
    with pytest.raises(UserError, match=r"refusing to unpickle the global (posix|os|nt)\.system") as e:
        run(tmp_path / "r", resume=str(evil))
    assert "weights_only" not in str(e.value) and not (tmp_path / "pwned").exists()
    with open(tmp_path / "legacy.pt", "wb") as f:                                    # a plain (not zip) pickle
        pickle.dump({"x": Payload()}, f, protocol=4)
    with pytest.raises(UserError, match=r"refusing to unpickle the global (posix|os|nt)\.system"):
        run(tmp_path / "r", resume=str(tmp_path / "legacy.pt"))
    assert not (tmp_path / "pwned").exists()


def test_without_flock_the_recorded_holder_decides(tmp_path, monkeypatch, capsys):
    """A file system without flock (some network mounts): a dead pid of this host is taken over, a live one or one of
    another host is refused."""
    import errno
    import fcntl
    import socket

    def no_locks(fd, op):
        if op & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / LOCK_FILE
    for pid, host, refused in [(int(dead.stdout), socket.gethostname(), False), (os.getpid(), socket.gethostname(), True),
                               (int(dead.stdout), "elsewhere", True)]:
        lock.write_text(json.dumps({"pid": pid, "host": host, "started": "then"}))
        if refused:
            with pytest.raises(UserError, match=f"pid {pid} on {host}"):
                RunLock(tmp_path)
        else:
            RunLock(tmp_path).release()
            assert f"taking over the stale lock of a run that ended without releasing it (pid {pid}" in capsys.readouterr().err
