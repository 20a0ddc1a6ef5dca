"""The coverage rules a changed-area answer must satisfy (no server needed: plain pyvmomi data)."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from pipeline.extents import Extent
from pipeline.vsphere.cbt import CbtCoverageError, check_span


def _answer(start: int, length: int, *areas: tuple[int, int]) -> vim.VirtualMachine.DiskChangeInfo:
    return vim.VirtualMachine.DiskChangeInfo(
        startOffset=start,
        length=length,
        changedArea=[vim.VirtualMachine.DiskChangeInfo.DiskChangeExtent(start=s, length=n) for s, n in areas],
    )


def test_a_well_formed_answer_gives_its_areas():
    assert check_span(_answer(100, 900, (100, 10), (500, 50)), 100, 10_000, 2000) == [
        Extent(100, 10),
        Extent(500, 50),
    ]


def test_an_answer_running_past_the_disk_is_clipped_to_the_capacity():
    assert check_span(_answer(0, 2048, (1000, 1048)), 0, 1024, 2000) == [Extent(1000, 24)]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (_answer(10, 100), "leaving a gap"),
        (_answer(0, 100), "overlapping"),
        (_answer(5, 0), "no progress"),
        (_answer(5, 100, (0, 10)), "outside the answer's span"),
        (_answer(5, 100, (100, 10)), "outside the answer's span"),
    ],
)
def test_answers_that_do_not_add_up_are_refused(answer, message):
    with pytest.raises(CbtCoverageError, match=message):
        check_span(answer, 5, 10_000, 2000)
