import pytest

from pipeline.engine.admission_book import AdmissionBook, AdmissionError, VmGrant
from pipeline.engine.latency import LatencyGate
from pipeline.engine.placement import PlacementLimits


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def book(total_slots=None, lease_s=60.0, strict_after_s=300.0, **limits):
    lim = PlacementLimits(**limits)
    gate = LatencyGate(lim.latency_stop_ms, lim.latency_slow_ms, lim.max_reads_per_datastore, lim.adaptive)
    clock = Clock()
    return AdmissionBook(lim, gate, total_slots, lease_s, clock=clock, strict_after_s=strict_after_s), clock


def granted(b):
    return dict(b.dispatch())


def test_snapshots_per_host_wait_for_a_release_in_arrival_order():
    b, _ = book(max_snapshots_per_host=2)
    tickets = [b.request(f"vm{i}", "h1", ["ds1"], "ds1") for i in range(4)]
    first = granted(b)
    assert sorted(first) == tickets[:2]
    b.release(first[tickets[0]].snapshot, "snapshot")
    assert list(granted(b)) == [tickets[2]]


def test_a_vm_grant_holds_snapshot_and_first_read_together():
    b, _ = book()
    t = b.request("vm1", "h1", ["ds1", "ds2"], "ds1")
    grant = granted(b)[t]
    assert isinstance(grant, VmGrant)
    assert b.usage[("snapshots on datastore", "ds2")] == 1
    assert b.usage[("reads on datastore", "ds1")] == 1


def test_no_snapshot_is_granted_while_its_first_read_cannot_start():
    b, _ = book(max_reads_per_datastore=1)
    b.request("vm1", "h1", ["ds1"], "ds1")
    granted(b)
    b.request("vm2", "h2", ["ds1"], "ds1")
    assert granted(b) == {}
    assert ("snapshots on host", "h2") not in b.usage


def test_reads_of_vms_with_an_open_snapshot_go_before_new_vms():
    b, _ = book(max_reads_per_datastore=1)
    vm1 = b.request("vm1", "h1", ["ds1"], "ds1")
    g1 = granted(b)[vm1]
    new_vm = b.request("vm2", "h2", ["ds1"], "ds1")
    second_disk = b.request("vm1", "h1", [], "ds1")  # asked later, but vm1's snapshot is open
    b.release(g1.read, "read")
    assert list(granted(b)) == [second_disk]
    assert new_vm in [r.ticket for r in b._later]


def test_a_waiter_is_first_in_line_for_what_blocks_it():
    b, _ = book(max_snapshots_per_host=1)
    t1 = b.request("vm1", "h1", ["ds1"], "ds1")
    first = granted(b)[t1]
    waiting = b.request("vm2", "h1", ["ds2"], "ds2")  # waits for host h1
    assert granted(b) == {}
    late = b.request("vm3", "h1", ["ds3"], "ds3")  # also h1: must not overtake vm2
    b.release(first.read, "read")
    b.release(first.snapshot, "snapshot")
    assert list(granted(b)) == [waiting]
    assert late in [r.ticket for r in b._later]


def test_a_waiter_does_not_hold_up_vms_on_resources_it_is_not_waiting_for():
    b, _ = book(max_snapshots_per_host=1, max_reads_per_datastore=2)
    b.request("vm1", "h1", ["ds1"], "ds1")
    granted(b)
    b.request("vm2", "h1", ["ds2"], "ds2")  # waits for host h1 only
    other_host = b.request("vm3", "h2", ["ds2"], "ds2")
    assert list(granted(b)) == [other_host]


def test_a_long_waiter_holds_every_resource_it_needs_so_it_cannot_starve():
    b, clock = book(max_snapshots_per_host=1, max_reads_per_datastore=1, strict_after_s=60)
    t1 = b.request("vm1", "h1", ["ds1"], "ds1")
    first = granted(b)[t1]
    b.request("vm2", "h1", ["ds2"], "ds2")
    clock.now = 61
    b.release(first.read, "read")  # h1's snapshot still taken; ds2 is free
    late = b.request("vm3", "h2", ["ds2"], "ds2")
    assert late not in granted(b)  # vm2 has waited long enough to hold ds2 for itself


def test_a_latency_stopped_datastore_does_not_block_its_host_for_others():
    b, _ = book()
    b.gate.observe({"ds1": 50})
    stopped = b.request("vm1", "h1", ["ds1"], "ds1")
    other = b.request("vm2", "h1", ["ds2"], "ds2")
    assert list(granted(b)) == [other]
    b.gate.observe({"ds1": 5})
    assert list(granted(b)) == [stopped]


def test_reads_never_exceed_the_proxy_slots_of_the_cluster():
    b, _ = book(total_slots=3)
    for i in range(6):
        b.request(f"vm{i}", f"h{i}", [f"ds{i}"], f"ds{i}")
    assert len(granted(b)) == 3
    assert b.usage[("proxy slots", "cluster")] == 3


def test_a_grant_whose_holder_stops_renewing_expires():
    b, clock = book(lease_s=10)
    t = b.request("vm1", "h1", ["ds1"], "ds1")
    g = granted(b)[t]
    clock.now = 8
    assert b.renew([g.snapshot]) == []
    clock.now = 15
    assert b.expire() == [g.read]  # the snapshot was renewed at 8, the read was not
    assert b.log[-1].event == "expire" and "holder gone" in b.log[-1].reason


def test_asking_a_snapshot_while_holding_a_read_is_refused():
    b, _ = book()
    b.request("vm1", "h1", [], "ds1")
    granted(b)
    with pytest.raises(AdmissionError, match="admit_vm"):
        b.request("vm1", "h1", ["ds1"], None)


def test_releasing_twice_is_harmless_and_wrong_kind_is_an_error():
    b, _ = book()
    t = b.request("vm1", "h1", ["ds1"], "ds1")
    grant = granted(b)[t]
    assert b.release(grant.read, "read") is True
    assert b.release(grant.read, "read") is False
    with pytest.raises(AdmissionError):
        b.release(grant.snapshot, "read")


def test_grant_reason_names_what_the_waiter_waited_for():
    b, clock = book(max_snapshots_per_host=1)
    t1 = b.request("vm1", "h1", ["ds1"], "ds1")
    first = granted(b)[t1]
    b.request("vm2", "h1", ["ds2"], "ds2")
    granted(b)
    clock.now = 3
    b.release(first.snapshot, "snapshot")
    granted(b)
    assert "after 3.00 s waiting for snapshots on host h1 full" in b.log[-1].reason
