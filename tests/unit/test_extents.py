"""Extent arithmetic: merge, clip, gaps and block alignment agree on what 'covered' means."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.extents import Extent, block_offsets, block_runs, clip, gaps, merge, total_bytes

CAP = 1 << 16
extents = st.lists(
    st.builds(lambda o, n: Extent(o, n), st.integers(0, CAP), st.integers(0, 4096)), max_size=40
)


def _bytes(es: list[Extent]) -> set[int]:
    return {b for e in es for b in range(e.offset, e.end)}


@given(extents)
def test_merge_covers_the_same_bytes_without_overlap(es):
    merged = merge(es)
    assert _bytes(merged) == _bytes(es)
    for a, b in zip(merged, merged[1:], strict=False):
        assert a.end < b.offset


@given(extents, st.integers(0, CAP), st.integers(0, CAP))
def test_gaps_and_clip_partition_the_range(es, a, b):
    lo, hi = min(a, b), max(a, b)
    covered = _bytes(clip(es, lo, hi))
    missing = _bytes(gaps(es, lo, hi))
    assert covered | missing == set(range(lo, hi))
    assert not covered & missing
    assert total_bytes(clip(es, lo, hi)) == len(covered)


@given(extents, st.sampled_from([512, 4096, 65536]))
def test_every_changed_byte_lies_in_exactly_one_aligned_block(es, bs):
    offs = block_offsets(es, bs, CAP)
    assert offs == sorted(set(offs))
    assert all(o % bs == 0 and o < CAP for o in offs)
    blocks = {o // bs for o in offs}
    assert {b // bs for b in _bytes(clip(es, 0, CAP))} == blocks


@given(st.lists(st.integers(0, 200), unique=True), st.integers(1, 8))
def test_block_runs_are_contiguous_capped_and_cover_every_block(idx, per_run):
    bs = 4096
    offs = sorted(i * bs for i in idx)
    runs = list(block_runs(offs, bs, per_run * bs))
    assert all(r.length <= per_run * bs and r.length % bs == 0 for r in runs)
    assert [o for r in runs for o in range(r.offset, r.end, bs)] == offs
