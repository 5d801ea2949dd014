"""Progress lines: a start line, a line with the count and an ETA at least every `every` seconds, an end line."""

from __future__ import annotations

import io
import re

from vlx.progress import Progress, _clock


def test_lines_with_count_rate_and_eta(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("vlx.progress.time.perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = Progress("phase", 10, every=30.0, stream=out)
    for i in range(1, 11):
        now[0] += 10.0  # one item every 10 s: a line every third item
        bar.update(i, f"loss {1 / i:.2f}")
    bar.done()
    lines = out.getvalue().splitlines()
    assert lines[0] == "phase: started (10 steps)"
    assert lines[1] == "phase: 3/10 (30%) loss 0.33 | 0:30 elapsed, ETA 1:10"
    assert len(lines) == 1 + 3 + 1 and lines[-1] == "phase: done, 10/10 in 1:40"
    assert all(re.search(r"ETA \d+:\d\d$", line) for line in lines[1:-1])


def test_resumed_progress_counts_from_where_it_started(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("vlx.progress.time.perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = Progress("tower", 100, start=50, every=0.0, stream=out)
    now[0] = 10.0
    bar.update(60)
    assert "resuming at 50" in out.getvalue().splitlines()[0]
    assert out.getvalue().splitlines()[1].endswith("ETA 0:40")  # 10 steps in 10 s, 40 to go


def test_clock():
    assert _clock(59.6) == "1:00" and _clock(3725) == "1:02:05"


def test_a_line_comes_even_while_one_step_runs_long():
    out = io.StringIO()
    bar = Progress("slow", 2, every=0.2, stream=out)
    import time

    time.sleep(0.7)  # no update for 0.7 s: the timer prints anyway
    bar.done()
    assert sum(": 0/2 (0%)" in line for line in out.getvalue().splitlines()) >= 2


def test_no_timer_lines_once_the_count_is_reached():
    import time

    out = io.StringIO()
    bar = Progress("short", 3, every=0.1, stream=out)
    bar.update(3)
    time.sleep(0.4)
    assert len(out.getvalue().splitlines()) <= 2  # the start line, at most one progress line


def test_an_abandoned_phase_stops_ticking_and_a_closed_stream_ends_the_timer():
    import gc
    import threading
    import time

    def timers():
        return sum("_tick" in t.name for t in threading.enumerate())

    time.sleep(0.2)  # timers of the phases above, which finished, have ended
    before = timers()
    out = io.StringIO()
    Progress("abandoned", 5, every=0.1, stream=out)  # its work raised: never updated, never done()
    gc.collect()
    time.sleep(0.3)
    assert out.getvalue().splitlines() == ["abandoned: started (5 steps)"]
    closed = io.StringIO()
    bar = Progress("closed", 5, every=0.1, stream=closed)
    closed.close()  # e.g. a test runner's captured stream, torn down
    time.sleep(0.3)
    assert timers() == before and bar.count == 0  # both timers have ended
