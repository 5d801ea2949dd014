"""Progress a person can follow, in a terminal and in a plain log file alike.

    bar = Progress("tower: pre-training", total=3000)
    for step in range(3000):
        ...
        bar.update(step + 1, f"loss {loss:.3f}")
    bar.done()

Every phase prints a line when it starts, then a line with the count, the rate, elapsed time and
an ETA at least every `every` seconds (30 by default), and one when it ends, on stderr. Plain
lines rather than a redrawn bar, so that `vlx demo > log 2>&1` shows what `vlx demo` is doing
while it does it (a redrawn bar writes nothing to a file until it ends).
"""

from __future__ import annotations

import sys
import threading
import time
import weakref


def _tick(ref, stop: threading.Event, period: float) -> None:
    while not stop.wait(period):
        bar = ref()
        if bar is None:
            return
        if time.perf_counter() - bar.last >= bar.every:
            bar.last = time.perf_counter()
            try:
                bar._print(bar.line(bar.info))
            except (ValueError, OSError):  # the stream was closed under it
                return
        del bar


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One phase's progress lines on `stream` (stderr); `start` counts work already done (a resume)."""

    def __init__(self, description: str, total: int, *, every: float = 30.0, start: int = 0, stream=None):
        self.description, self.total, self.every = description, max(1, int(total)), every
        self.stream = stream or sys.stderr
        self.first, self.count, self.info = start, start, ""
        self.t0 = self.last = time.perf_counter()
        self._print(f"{description}: started ({self.total} {'steps' if start == 0 else f'steps, resuming at {start}'})")
        # A step can outlast `every` (a long optimizer step, a slow batch of decoding): a timer keeps
        # the lines coming between updates.
        # The timer holds the phase weakly: a phase abandoned without `done()` (its work raised) stops
        # ticking once it is gone, and a closed stream ends it too.
        self._stop = threading.Event()
        if 0 < every < float("inf"):
            threading.Thread(target=_tick, args=(weakref.ref(self), self._stop, max(0.05, min(every, 5.0))),
                             daemon=True).start()

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def line(self, info: str = "") -> str:
        elapsed = time.perf_counter() - self.t0
        done = self.count - self.first
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        eta_text = _clock(eta) if eta == eta else "?"
        return (f"{self.description}: {self.count}/{self.total} ({100 * self.count / self.total:.0f}%)"
                f"{f' {info}' if info else ''} | {_clock(elapsed)} elapsed, ETA {eta_text}")

    def update(self, count: int, info: str = "") -> None:
        self.count, self.info = count, info or self.info
        if self.count >= self.total:
            self._stop.set()  # finished, whether or not done() is called: no more timer lines
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._print(self.line(info))

    def advance(self, n: int = 1, info: str = "") -> None:
        self.update(self.count + n, info)

    def done(self, info: str = "") -> float:
        """Print the closing line -> seconds the phase took."""
        self._stop.set()
        elapsed = time.perf_counter() - self.t0
        self._print(f"{self.description}: done, {self.count}/{self.total} in {_clock(elapsed)}{f' ({info})' if info else ''}")
        return elapsed
