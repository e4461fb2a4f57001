"""What a training run records as it goes (rank 0 writes): `metrics.jsonl`, an optional TensorBoard log, `run.json`.

metrics.jsonl, one JSON object a line, every `train.log_every` steps and at the last step of every attempt (the end,
`--max-steps`, a signal, the time budget, a non-finite loss), so even a run stopped before its first interval has one:

    step         optimizer steps done
    images_seen  step x train.batch_size (the global batch), so cumulative across resumes
    wall_time    seconds of training behind this step, summed over the attempts that led to it (kept in the
                 checkpoint; time lost to a kill after the last checkpoint and time in a queue are not counted)
    time         unix time of the line
    loss, lr     the objective (sum of the distinct losses) and the learning rate
    <method's>   what the method logs (mse, ...), grad_norm[_<module>] with train.grad_clip
    it_s         steps per second since the previous line

A method that alternates what it logs (a GAN's generator and discriminator steps) reports the latest value of each
key since the previous line.

`train.tensorboard: true` also writes the same scalars (less `step` and `time`) and the sample grids to RUN/tensorboard
(`tensorboard --logdir RUN`); without the `tensorboard` package the run says so in one line and goes on without it.

run.json: how the run ended, rewritten at the end of every attempt: the step reached, the recipe's `train.max_steps`
(the horizon of the schedules), the `--max-steps` asked for, what stopped it, and one entry per attempt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fsg.io.checkpoint import atomic_write
from fsg.train.runfolder import METRICS_FILE, RUN_RECORD, TENSORBOARD_DIR, say_stderr

def default_sample_every(max_steps: int, ckpt_every: int, grids: int = 10) -> int:
    """The grid interval when train.sample_every is 0: about `grids` grids over the recipe's `max_steps`, each at a
    checkpoint (the smallest multiple of `ckpt_every` that is at least max_steps / grids), so a grid shows the
    model.safetensors written at the same step."""
    return max(1, -(-max_steps // (grids * ckpt_every))) * ckpt_every


def open_tensorboard(folder: Path, say: Callable[[str], None] = say_stderr):
    """A SummaryWriter into `folder`, or None (after one line) when the optional package is missing."""
    try:        # torch.utils.tensorboard needs the `tensorboard` package, an optional extra
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        say("train.tensorboard: the tensorboard package is not installed (pip install tensorboard); "
            "writing metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(folder))


class RunLog:
    """metrics.jsonl lines (and TensorBoard scalars and grids) of one attempt; every method is a no-op unless
    `enabled` (rank 0). `wall_time` is the training time behind the resumed step."""

    def __init__(self, run_dir: Path, batch_size: int, *, enabled: bool, tensorboard: bool = False,
                 wall_time: float = 0.0, say: Callable[[str], None] = say_stderr):
        self.run_dir, self.batch_size, self.enabled = Path(run_dir), int(batch_size), enabled
        self._origin = time.monotonic() - wall_time
        self._last = time.monotonic()
        self._window: dict[str, float] = {}
        self._steps = 0                      # steps since the last line
        self.step = 0
        self.tb = open_tensorboard(self.run_dir / TENSORBOARD_DIR, say) if enabled and tensorboard else None

    def wall_time(self) -> float:
        return time.monotonic() - self._origin

    def add(self, step: int, logs: dict[str, float]) -> None:
        """One optimizer step done: `step` is the count after it, `logs` its values."""
        self._window.update(logs)
        self._steps += 1
        self.step = step

    def write(self) -> dict[str, Any] | None:
        """The line of the steps since the previous one (nothing when there are none); returns it."""
        if not self._steps:
            return None
        now = time.monotonic()
        line = {"step": self.step, "images_seen": self.step * self.batch_size, "wall_time": round(self.wall_time(), 3),
                "time": round(time.time(), 3), **{k: round(float(v), 6) for k, v in self._window.items()},
                "it_s": round(self._steps / max(now - self._last, 1e-9), 3)}
        self._last, self._steps, self._window = now, 0, {}
        if self.enabled:
            with open(self.run_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(line) + "\n")
            if self.tb is not None:
                for k, v in line.items():
                    if k not in ("step", "time"):
                        self.tb.add_scalar(k, v, self.step, walltime=line["time"])
                self.tb.flush()
        return line

    def image(self, step: int, png: Path) -> None:
        """A sample grid PNG written at `step`, into TensorBoard."""
        if self.tb is None or not Path(png).is_file():
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            self.tb.add_image("samples", np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def write_run_record(run_dir: Path, *, step: int, horizon: int, requested: int | None, stopped_by: str | None,
                     started_at: int, started: float, images_seen: int, wall_time: float) -> dict[str, Any]:
    """Rewrite RUN/run.json at the end of an attempt (rank 0): the step reached, `train.max_steps` (the horizon of the
    schedules), the `--max-steps` asked for, what stopped the run (None: it reached train.max_steps) and the attempts
    (an attempt killed without a chance to write is missing)."""
    path = Path(run_dir) / RUN_RECORD
    try:
        attempts = json.loads(path.read_text()).get("attempts", [])
    except (OSError, ValueError, AttributeError):
        attempts = []
    attempts.append({"from_step": started_at, "to_step": step, "stopped_by": stopped_by, "started": _stamp(started),
                     "ended": _stamp(time.time())})
    record = {"status": "finished" if stopped_by is None else "stopped", "step": step, "max_steps": horizon,
              "requested_max_steps": requested, "stopped_by": stopped_by, "images_seen": images_seen,
              "wall_time": round(wall_time, 3), "attempts": attempts}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    return record
