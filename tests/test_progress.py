"""Progress off a terminal: plain lines with step, rate, fields and ETA at a fixed interval; nothing when disabled."""

import io
import re

from fsg.progress import Progress, clock, interval_from_env, track


def test_plain_lines_at_interval_with_eta():
    out = io.StringIO()
    with Progress(10, "train", start=2, terminal=False, interval=0.0, stream=out) as bar:
        for step in range(3, 11):
            bar.update(step, loss=0.5)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train 2/10 (20%)")              # a line at the start (the resumed step)
    assert len(lines) == 1 + 8                                  # then one per update at interval 0, no duplicate at the end
    assert re.fullmatch(r"train 6/10 \(60%\) \| [0-9.e+]+ it/s \| loss 0\.5 \| elapsed \d+:\d\d \| ETA (\d+:\d\d|\?)", lines[4])
    assert lines[-1].startswith("train 10/10 (100%)") and lines[-1].endswith("ETA 0:00")


def test_long_interval_prints_start_and_end_only():
    out = io.StringIO()
    assert list(track(range(5), 5, "sample", terminal=False, interval=3600, stream=out)) == list(range(5))
    lines = out.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["sample 0/5 (0%)", "sample 5/5 (100%)"]


def test_disabled_is_silent_and_terminal_draws_a_bar():
    out = io.StringIO()
    with Progress(3, "x", enabled=False, stream=out) as bar:
        bar.advance(3)
    assert out.getvalue() == ""
    out = io.StringIO()
    with Progress(3, "eval", terminal=True, stream=out) as bar:
        bar.advance(3, nfe=2)
    assert "eval" in out.getvalue() and "3/3" in out.getvalue()


def test_clock_and_interval_env(monkeypatch):
    assert clock(5) == "0:05" and clock(3725) == "1:02:05" and clock(float("inf")) == "?"
    monkeypatch.setenv("FSG_PROGRESS_INTERVAL", "7.5")
    assert interval_from_env() == 7.5
    for bad in ("nan", "-1", "x"):
        monkeypatch.setenv("FSG_PROGRESS_INTERVAL", bad)
        assert interval_from_env() == 30.0
