"""Replays of what the scheduler recorded: the most of anything that ever ran at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def max_overlap_by_resource(events: Iterable) -> dict[tuple[str, str], int]:
    """From the admission actor's grants log: peak concurrent grants per (resource, name)."""
    live: Counter = Counter()
    peak: Counter = Counter()
    for e in events:
        keys = [(f"{e.kind}s on host", e.host)] + [(f"{e.kind}s on datastore", ds) for ds in e.datastores]
        step = 1 if e.event == "grant" else -1
        for k in keys:
            live[k] += step
            peak[k] = max(peak[k], live[k])
    return dict(peak)


def max_overlap_of_intervals(intervals: Iterable[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    live = peak = 0
    for _, step in edges:  # at equal times the end (-1) sorts first: touching is not overlapping
        live += step
        peak = max(peak, live)
    return peak
