"""The datastore latency gate: stop new tasks, slow running readers, or adapt concurrency.

The gate reads samples from a ``LatencySource`` (in production: vCenter's PerformanceManager,
polled every 20 s) and turns them into three answers per datastore: may a new task start, how long
should a running reader pause between reads, and how many readers may run at once. It holds no
clock and no thread: the admission actor polls and feeds it, so tests can drive it sample by sample.

Only changes are decisions (a datastore stopping, resuming, slowing, or its limit moving); an
unchanged state at the next poll is not logged again, so a night of polls stays readable.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from pipeline.errors import VmpumpError

log = logging.getLogger(__name__)

# A reader over the slow threshold pauses this long per millisecond of excess latency, so the
# pause grows with the overload; capped so a reader never stalls longer than a poll would fix.
PAUSE_S_PER_EXCESS_MS = 0.004
MIN_PAUSE_S = 0.01
MAX_PAUSE_S = 1.0


class LatencySourceError(VmpumpError):
    """Datastore latency could not be read."""


@runtime_checkable
class LatencySource(Protocol):
    def datastore_latency_ms(self) -> dict[str, float]:
        """Latest latency per datastore name (the larger of read and write), in milliseconds."""
        ...


class ScriptedLatencySource:
    """Latency written to a JSON file by a script or a test, read back at every poll.

    A file, not memory, because the gate runs inside the admission actor's process while the
    script runs elsewhere; every process on the machine sees the same file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def set(self, latency_ms: Mapping[str, float]) -> None:
        """Replace the whole script (datastores left out report nothing)."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".latency-")
        with os.fdopen(fd, "w") as f:
            json.dump({str(k): float(v) for k, v in latency_ms.items()}, f)
        os.replace(tmp, self.path)  # atomic, so a poll never reads half a file

    def datastore_latency_ms(self) -> dict[str, float]:
        try:
            return {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError) as e:
            raise LatencySourceError(f"latency script {self.path} is not a JSON object: {e}") from e


class SequenceLatencySource:
    """One sample per call from a fixed list, repeating the last one: for pure unit tests."""

    def __init__(self, samples: Iterable[Mapping[str, float]]) -> None:
        self._samples = [dict(s) for s in samples]
        if not self._samples:
            raise LatencySourceError("a sequence latency source needs at least one sample")
        self._next = 0

    def datastore_latency_ms(self) -> dict[str, float]:
        sample = self._samples[min(self._next, len(self._samples) - 1)]
        self._next += 1
        return dict(sample)


@dataclass(frozen=True)
class LatencyDecision:
    at: float
    datastore: str
    latency_ms: float | None
    action: str  # "stop", "go", "slow", "unslow", "shrink", "grow", "source-error"
    read_limit: int
    reason: str


@dataclass
class _DatastoreState:
    latency_ms: float | None = None
    stopped: bool = False
    slowed: bool = False
    read_limit: int = 1


class LatencyGate:
    """Per-datastore decisions from latency samples; see the module docstring.

    ``adaptive`` adds AIMD on the datastore's read limit: +1 per sample below ``target_ms``,
    halved per sample above it, between 1 and ``max_reads``. The stop threshold still applies
    on top, so adaptive mode only ever admits less than static mode.
    """

    def __init__(
        self,
        stop_ms: float,
        slow_ms: float,
        max_reads: int,
        adaptive: bool = False,
        target_ms: float | None = None,
    ) -> None:
        self.stop_ms = stop_ms
        self.slow_ms = slow_ms
        self.max_reads = max_reads
        self.adaptive = adaptive
        self.target_ms = target_ms if target_ms is not None else stop_ms
        self.decisions: list[LatencyDecision] = []
        self._state: dict[str, _DatastoreState] = {}

    def _ds(self, datastore: str) -> _DatastoreState:
        if datastore not in self._state:
            self._state[datastore] = _DatastoreState(read_limit=self.max_reads)
        return self._state[datastore]

    def may_start(self, datastore: str) -> bool:
        """False while the datastore's latency is above the stop threshold."""
        return not self._ds(datastore).stopped

    def read_limit(self, datastore: str) -> int:
        """Concurrent reads allowed on the datastore (``max_reads`` unless adaptive shrank it)."""
        return self._ds(datastore).read_limit

    def reader_delay_s(self, datastore: str) -> float:
        """Pause a running reader takes between reads: zero unless latency is above ``slow_ms``."""
        state = self._ds(datastore)
        if not state.slowed or state.latency_ms is None:
            return 0.0
        excess = state.latency_ms - self.slow_ms
        return min(MAX_PAUSE_S, max(MIN_PAUSE_S, excess * PAUSE_S_PER_EXCESS_MS))

    def latency_ms(self, datastore: str) -> float | None:
        return self._ds(datastore).latency_ms

    def observe(self, sample: Mapping[str, float], at: float | None = None) -> list[LatencyDecision]:
        """Take one poll's sample; returns the decisions it caused (also kept in ``decisions``).

        A datastore missing from the sample, or sampled as -1 (vCenter's "no value"), keeps its
        last state: no I/O in an interval is no reason to change course.
        """
        at = time.time() if at is None else at
        made: list[LatencyDecision] = []
        for datastore, latency in sorted(sample.items()):
            if not latency >= 0:  # vCenter reports -1 for "no sample"; NaN is no sample either
                continue
            state = self._ds(datastore)
            state.latency_ms = latency
            made.extend(self._threshold_decisions(datastore, state, latency, at))
            if self.adaptive:
                made.extend(self._aimd_decisions(datastore, state, latency, at))
        for decision in made:
            self._record(decision)
        return made

    def source_failed(self, error: BaseException, at: float | None = None) -> LatencyDecision:
        """A poll failed: keep every datastore as it was, and say so once per failure."""
        decision = LatencyDecision(
            at=time.time() if at is None else at,
            datastore="*",
            latency_ms=None,
            action="source-error",
            read_limit=self.max_reads,
            reason=f"latency poll failed ({error}); keeping the last decisions",
        )
        self._record(decision)
        return decision

    def _threshold_decisions(
        self, datastore: str, state: _DatastoreState, latency: float, at: float
    ) -> list[LatencyDecision]:
        made = []

        def decide(action: str, reason: str) -> None:
            made.append(LatencyDecision(at, datastore, latency, action, state.read_limit, reason))

        if latency > self.stop_ms and not state.stopped:
            state.stopped = True
            decide("stop", f"{latency:.1f} ms > stop threshold {self.stop_ms:g} ms: no new tasks")
        elif latency <= self.stop_ms and state.stopped:
            state.stopped = False
            decide("go", f"{latency:.1f} ms <= stop threshold {self.stop_ms:g} ms: tasks may start")
        if latency > self.slow_ms and not state.slowed:
            state.slowed = True
            decide("slow", f"{latency:.1f} ms > slow threshold {self.slow_ms:g} ms: readers pause")
        elif latency <= self.slow_ms and state.slowed:
            state.slowed = False
            decide("unslow", f"{latency:.1f} ms <= slow threshold {self.slow_ms:g} ms: full speed")
        return made

    def _aimd_decisions(
        self, datastore: str, state: _DatastoreState, latency: float, at: float
    ) -> list[LatencyDecision]:
        before = state.read_limit
        if latency > self.target_ms:
            state.read_limit = max(1, before // 2)
            action, why = "shrink", f"{latency:.1f} ms > target {self.target_ms:g} ms: halve"
        else:
            state.read_limit = min(self.max_reads, before + 1)
            action, why = "grow", f"{latency:.1f} ms <= target {self.target_ms:g} ms: add one"
        if state.read_limit == before:
            return []
        reason = f"{why} read limit {before} -> {state.read_limit}"
        return [LatencyDecision(at, datastore, latency, action, state.read_limit, reason)]

    def _record(self, decision: LatencyDecision) -> None:
        self.decisions.append(decision)
        level = logging.WARNING if decision.action in ("stop", "slow", "source-error") else logging.INFO
        log.log(level, "datastore %s: %s (%s)", decision.datastore, decision.action, decision.reason)
