"""CPU-seconds of this process and everything it starts (Spark's JVM, its Python workers, the
TorchDistributor ranks), read from /proc while a benchmark runs (Linux only).

A child that exits between two samples loses at most one sampling interval of its CPU time, so the
meter samples often (default every 0.5 s). `cpu_seconds_between(start, end)` is the tree's CPU time
spent in a wall-clock window: the train stage records when each model's fit started and how long it
took, and the quality benchmark turns those windows into per-model training CPU-seconds.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids, for every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited while listed
                continue
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _cpu_seconds(pid: int) -> tuple[int, float] | None:
    """(start time in clock ticks since boot, user + system CPU seconds) of one process (its own
    threads, not its children); None once it is gone. The start time tells a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is fields[0], utime/stime fields[11]/[12], starttime fields[19].
    return int(fields[19]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class CpuMeter:
    """Samples the CPU time of `root` (default: this process) and its descendants in a thread.

    Use as a context manager; `samples` is [(unix time, cumulative CPU-seconds of every process seen
    so far)], each process counted at the last value read before it exited."""

    def __init__(self, root: int | None = None, interval_s: float = 0.5):
        self.root = os.getpid() if root is None else root
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._last: dict[tuple[int, int], float] = {}  # (pid, start time) -> last CPU seconds read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def _descendants(self) -> list[int]:
        tree, found, pending = _children(), [], [self.root]
        while pending:
            pid = pending.pop()
            found.append(pid)
            pending.extend(tree.get(pid, ()))
        return found

    def sample(self) -> None:
        for pid in self._descendants():
            read = _cpu_seconds(pid)
            if read is not None:
                started, seconds = read
                self._last[(pid, started)] = seconds
        self.samples.append((time.time(), sum(self._last.values())))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "CpuMeter":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def cpu_seconds_between(self, start: float, end: float) -> float:
        """CPU-seconds the tree spent between two unix times (interpolated between samples)."""
        times = [t for t, _ in self.samples]

        def at(moment: float) -> float:
            index = bisect.bisect_left(times, moment)
            if index == 0:
                return self.samples[0][1]
            if index >= len(times):
                return self.samples[-1][1]
            (t0, c0), (t1, c1) = self.samples[index - 1], self.samples[index]
            return c0 + (c1 - c0) * (moment - t0) / (t1 - t0) if t1 > t0 else c1

        return at(end) - at(start)
