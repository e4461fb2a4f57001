"""Progress of long work (training, sampling, evaluation, encoding): a rich bar on a terminal, and off one (a Slurm
log, `nohup`, a CI job, a notebook's captured stderr) a plain line at a fixed interval, so a 24-hour job's log is
never empty:

    train 1200/4000 (30%) | 8.41 it/s | loss 0.0312 | elapsed 2:23 | ETA 5:33

    with Progress(total=4000, what="train", start=step) as bar:
        ...
        bar.update(step, loss=0.031)

    for batch in track(batches, total, "sample"):       # the same, around an iterable
        ...

The interval of plain lines is `FSG_PROGRESS_INTERVAL` seconds (default 30); a line is also printed at the start and
at the end. Rates and the ETA count only the work done since this process started (a resumed run's earlier steps are
not mistaken for speed).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL = 30.0


def interval_from_env() -> float:
    """`FSG_PROGRESS_INTERVAL` in seconds (> 0), default 30; a bad value falls back to the default."""
    raw = os.environ.get("FSG_PROGRESS_INTERVAL", "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value > 0 else DEFAULT_INTERVAL


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss or m:ss ('?' when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _format_field(name: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{name} {value:.4g}"
    return f"{name} {value}"


class Progress:
    """Progress towards `total` units of work; see the module docstring. `enabled=False` (other ranks, `--no-progress`)
    makes every call a no-op; `terminal=None` decides by whether `stream` is a terminal."""

    def __init__(self, total: int, what: str, *, start: int = 0, unit: str = "it", enabled: bool = True,
                 terminal: bool | None = None, interval: float | None = None, stream: IO[str] | None = None):
        self.total, self.what, self.unit, self.enabled = int(total), what, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = terminal if terminal is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else interval_from_env()
        self.start = self.completed = int(start)
        self.fields: dict[str, Any] = {}
        self._t0 = self._last_line = time.monotonic()
        self._bar = self._task = None
        self._finished = False

    # rates --------------------------------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    @property
    def rate(self) -> float:
        """Units per second since this process started (0 before any unit is done)."""
        done, dt = self.completed - self.start, self.elapsed
        return done / dt if done > 0 and dt > 0 else 0.0

    @property
    def eta(self) -> float:
        rate = self.rate
        return (self.total - self.completed) / rate if rate > 0 else math.inf

    def line(self) -> str:
        """The plain progress line."""
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total > 0 else ""
        parts = [f"{self.what} {self.completed}/{self.total}{pct}", f"{self.rate:.3g} {self.unit}/s"]
        parts += [_format_field(k, v) for k, v in self.fields.items()]
        parts += [f"elapsed {clock(self.elapsed)}", f"ETA {clock(self.eta) if self.completed < self.total else '0:00'}"]
        return " | ".join(parts)

    # context ------------------------------------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        if self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress
            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=Console(file=self.stream), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.total, completed=self.completed, info="")
        else:
            self._emit()
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        elif not self._finished:
            self._emit()

    def update(self, completed: int, **fields: Any) -> None:
        """Work done so far (absolute) and fields to show (loss=..., nfe=...)."""
        if not self.enabled:
            return
        self.completed = int(completed)
        self.fields.update(fields)
        if self._bar is not None:
            info = " ".join(_format_field(k, v) for k, v in [("rate", f"{self.rate:.3g} {self.unit}/s"), *self.fields.items()])
            self._bar.update(self._task, completed=self.completed, info=info)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval or (self.completed >= self.total and not self._finished):
            self._emit()
            self._finished = self.completed >= self.total

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(self.completed + n, **fields)

    def _emit(self) -> None:
        self._last_line = time.monotonic()
        print(self.line(), file=self.stream, flush=True)


def track(items: Iterable[T], total: int, what: str, *, unit: str = "batch", enabled: bool = True,
          terminal: bool | None = None, interval: float | None = None, stream: IO[str] | None = None) -> Iterator[T]:
    """Yield `items`, showing progress over `total` of them (the signature of `fsg.eval.fid.Progress`)."""
    with Progress(total, what, unit=unit, enabled=enabled, terminal=terminal, interval=interval, stream=stream) as bar:
        for item in items:
            yield item
            bar.advance()
