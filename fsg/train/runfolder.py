"""A run folder: one writer at a time, nothing a user had overwritten, and only complete files trusted on resume.

- `RunLock`: `RUN/run.lock`, an exclusive `flock` held by rank 0 for the life of the run, naming its holder (pid,
  host, start). The kernel drops a flock when its process dies, so a lock file that nobody holds is the stale lock of
  a crashed run: it is taken over with a message naming the dead holder; a held one is refused naming the live one.
  The file stays after a clean exit (emptied): deleting it would let two later runs lock two different files.
- `claim_run_folder`: a fresh run never writes over a folder holding a model or run files (`RUN_FILES`) unless
  asked with `--overwrite`, which moves them aside into `RUN/replaced-<time>/`; `--resume auto` continues a run
  with training states, starts fresh (and says so) where there is none, and refuses a folder holding a model
  but no state, e.g. the output of `fsg convert`.
- `newest_state`: the newest training state that loads, skipping (and naming) unreadable or truncated ones.
- `truncate_metrics`: `metrics.jsonl` cut to the resumed step (the lines of a killed attempt past it dropped, a
  partial last line too) and rewritten atomically.
- `remove_stale_temporaries`: the temporary files of saves that a kill interrupted.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from fsg.errors import UserError
from fsg.io.checkpoint import MODEL_FILE, atomic_write, check_output_dir, list_states, load_state
from fsg.train.phema import SNAPSHOT_DIR

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CKPT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
RUN_RECORD = "run.json"               # how each attempt ended (fsg.train.runlog)
TENSORBOARD_DIR = "tensorboard"       # train.tensorboard's event files (fsg.train.runlog)
RUN_FILES = (MODEL_FILE, CONFIG_FILE, METRICS_FILE, CKPT_DIR, SAMPLES_DIR, SNAPSHOT_DIR, RUN_RECORD,
             TENSORBOARD_DIR)   # what a run writes
TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")     # fsg.io.checkpoint.atomic_write's temporary files

Say = Callable[[str], None]


def say_stderr(message: str) -> None:
    print(f"fsg: {message}", file=sys.stderr, flush=True)


class RunLock:
    """The exclusive lock of a run folder (see the module docstring); `release()` at the end of the run."""

    def __init__(self, run_dir: Path, say: Say = say_stderr):
        self.path = Path(run_dir) / LOCK_FILE
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"--run-dir {run_dir}: cannot create {LOCK_FILE} ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self.fd)
            raise UserError(f"--run-dir {run_dir} is in use by another run ({holder or 'holder unknown'}); "
                            f"wait for it to end or pick another --run-dir") from None
        except OSError as e:                 # a file system without flock: the recorded holder decides
            try:
                self._refuse_a_live_holder(e)
            except UserError:
                os.close(self.fd)
                raise
        previous = self._holder()
        if previous:
            say(f"{self.path}: taking over the stale lock of a run that ended without releasing it ({previous})")
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(self.fd)

    def _record(self) -> dict[str, Any] | None:
        try:
            text = os.pread(self.fd, 4096, 0).decode("utf-8", "replace").strip()
            record = json.loads(text) if text else None
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _holder(self) -> str:
        r = self._record()
        return "" if r is None else f"pid {r.get('pid')} on {r.get('host')}, started {r.get('started')}"

    def _refuse_a_live_holder(self, error: OSError) -> None:
        """Where flock is not supported: a UserError unless the recorded holder is gone (none recorded, or a pid of
        this host that no longer runs); a holder on another host cannot be checked, so it is refused too."""
        r = self._record()
        if r is None:
            return
        if r.get("host") != socket.gethostname():
            raise UserError(f"{self.path}: this file system cannot lock ({error.strerror}) and the lock names a run on "
                            f"another host ({self._holder()}); delete {self.path} if that run has ended")
        try:
            os.kill(int(r.get("pid", -1)), 0)
        except (ProcessLookupError, ValueError, TypeError):
            return
        except PermissionError:                # alive, another user's
            pass
        raise UserError(f"--run-dir {self.path.parent} is in use by another run ({self._holder()})")

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)             # empty: released cleanly (a non-empty unlocked file is a crashed run's)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def run_files(run_dir: Path) -> list[str]:
    """The names of `RUN_FILES` present in `run_dir`."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def move_aside(run_dir: Path, names: list[str]) -> Path:
    """Move the run files `names` of `run_dir` into `run_dir/replaced-<time>/` (nothing is deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = Path(run_dir) / f"replaced-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = Path(run_dir) / f"replaced-{stamp}-{n}"
    target.mkdir()
    for name in names:
        os.replace(Path(run_dir) / name, target / name)
    return target


def check_run_folder(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """The checks of `claim_run_folder` that need no lock and no write: every rank runs them before any work."""
    check_output_dir(run_dir, "--run-dir")
    if overwrite and resume is not None:
        raise UserError("--overwrite starts a new run and --resume continues one: give one of them")
    if resume not in (None, "auto") and not Path(resume).is_file():
        raise UserError(f"--resume {resume}: no such training state file (give auto or a checkpoints/state-*.pt file)")
    present = run_files(run_dir) if Path(run_dir).is_dir() else []
    if resume is None and present and not overwrite:
        raise UserError(f"--run-dir {run_dir} already holds a run ({', '.join(present)}): continue it with --resume "
                        f"auto, start over with --overwrite (its files are moved into {run_dir}/replaced-<time>/), "
                        f"or pick another --run-dir")
    if resume == "auto" and not list_states(Path(run_dir) / CKPT_DIR) and (Path(run_dir) / MODEL_FILE).exists():
        raise UserError(f"--resume auto: {run_dir} holds {MODEL_FILE} but no training state to continue (e.g. the "
                        f"output of `fsg convert`); train into another --run-dir, or start over with --overwrite "
                        f"(without --resume)")


def claim_run_folder(run_dir: Path, resume: str | None, overwrite: bool, say: Say = say_stderr) -> RunLock:
    """Rank 0, before any work: create and lock the folder, check it again under the lock, move an earlier run aside
    (`--overwrite`), say what `--resume auto` will do, and remove the temporary files of interrupted saves."""
    run_dir = Path(run_dir)
    existed = run_dir.is_dir()
    check_run_folder(run_dir, resume, overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--run-dir {run_dir}: cannot create the folder ({e.strerror})") from None
    lock = RunLock(run_dir, say)
    try:
        check_run_folder(run_dir, resume, overwrite)          # again: another run may have written in between
        present = run_files(run_dir)
        if overwrite and present:
            say(f"--overwrite: moved the earlier run's {', '.join(present)} into {move_aside(run_dir, present)}")
        if resume == "auto" and not list_states(run_dir / CKPT_DIR):
            where = "does not exist" if not existed else f"holds no training state in {CKPT_DIR}/"
            say(f"--resume auto: {run_dir} {where}; starting a fresh run")
        removed = remove_stale_temporaries(run_dir)
        if removed:
            say(f"removed {removed} temporary file(s) of interrupted saves in {run_dir}")
    except BaseException:
        lock.release()
        raise
    return lock


def remove_stale_temporaries(run_dir: Path) -> int:
    """Delete the temporary files `atomic_write` leaves when a save is killed, in the run folder and the folders
    the run writes; call it under the run's lock, when no save of this run can be under way. Returns the count."""
    count = 0
    for folder in (run_dir, run_dir / CKPT_DIR, run_dir / SAMPLES_DIR, run_dir / SNAPSHOT_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if TEMPORARY.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
                    count += 1
    return count


def newest_state(ckpt_dir: Path, say: Say = say_stderr) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest training state in `ckpt_dir` that loads completely, naming each newer one it skips
    (truncated by a kill, unreadable, refused); None when there is none."""
    for _, path in reversed(list_states(ckpt_dir)):
        try:
            return path, load_state(path)
        except UserError as e:
            say(f"--resume auto: skipping {e}")
    return None


def read_metrics(path: Path, step: int) -> list[str]:
    """The lines of `metrics.jsonl` up to `step`: complete JSON records only (a killed write's partial line is not)."""
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            keep.append(line)
    return keep


def truncate_metrics(path: Path, step: int) -> None:
    """Rewrite `metrics.jsonl` with its lines up to `step` (atomically: a kill leaves the old or the new file)."""
    if path.exists():
        keep = read_metrics(path, step)
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in keep)))
