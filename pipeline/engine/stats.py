"""Per-stage busy time and byte counts, measured where the work happens.

Busy time is summed over the threads of one disk task, so a stage that keeps two threads busy for
a second reports two seconds; the bottleneck report divides by the threads that could run it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

STAGES = ("source_read", "hash", "dedup", "compress", "target_write", "admission_wait")


@dataclass
class StageClock:
    busy_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def stage(self, name: str, nbytes: int = 0) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start, nbytes)

    def add(self, name: str, seconds: float, nbytes: int = 0) -> None:
        with self._lock:
            self.busy_s[name] = self.busy_s.get(name, 0.0) + seconds
            self.bytes[name] = self.bytes.get(name, 0) + nbytes

    def merged(self, other: StageClock) -> StageClock:
        out = StageClock()
        for src in (self, other):
            for k, v in src.busy_s.items():
                out.busy_s[k] = out.busy_s.get(k, 0.0) + v
            for k, n in src.bytes.items():
                out.bytes[k] = out.bytes.get(k, 0) + n
        return out

    def __getstate__(self) -> dict[str, dict]:
        return {"busy_s": dict(self.busy_s), "bytes": dict(self.bytes)}

    def __setstate__(self, state: dict[str, dict]) -> None:
        self.busy_s, self.bytes = state["busy_s"], state["bytes"]
        self._lock = threading.Lock()


class PeakRss:
    """Samples this process's resident memory: the proof that a disk task's memory is bounded."""

    def __init__(self, interval: float = 0.05) -> None:
        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base
