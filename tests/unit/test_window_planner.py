from pathlib import Path

import pytest
from rich.console import Console

from pipeline.engine.placement import PlacementLimits
from pipeline.ops.estate import DiskSpec, Estate, EstateError, VmSpec, estate_from_dict, load_estate
from pipeline.ops.window import (
    WindowError,
    classic_sizing,
    parse_window_hours,
    plan_window,
    render_window_plan,
    sim_advice,
    simulate_night,
)

GiB, TiB, MiB = 2**30, 2**40, 2**20
ROOT = Path(__file__).resolve().parents[2]


def test_classic_formula_matches_the_hand_computed_example():
    # 100 TiB in 8 h: T = 104,857,600 MiB / 28,800 s = 3,640.9 MiB/s.
    full = classic_sizing(100 * TiB, 8 * 3600, "full", cores_per_proxy=16)
    assert full.throughput_mib_s == pytest.approx(3640.89, abs=0.01)
    assert full.cores == pytest.approx(36.41, abs=0.01)  # T / 100
    assert (full.tasks, full.ram_gib, full.proxies) == (37, 74, 3)
    incr = classic_sizing(100 * TiB, 8 * 3600, "incremental", cores_per_proxy=16, change_rate=0.1)
    assert incr.cores == pytest.approx(14.56, abs=0.01)  # T * 0.1 / 25
    assert (incr.tasks, incr.ram_gib, incr.proxies) == (15, 30, 1)
    assert incr.moved_bytes == pytest.approx(10 * TiB)


def small_estate(vms=24, hosts=4, datastores=3, disk=8 * GiB, throughput=None):
    specs = tuple(
        VmSpec(f"vm{i}", f"esx{i % hosts}", (DiskSpec(disk, f"ds{i % datastores}"),), 0.1) for i in range(vms)
    )
    return Estate(specs, {} if throughput is None else {f"ds{i}": throughput for i in range(datastores)})


def night(estate, slots, **limits):
    lim = PlacementLimits(slots_per_proxy=slots, **limits)
    return simulate_night(estate, 1, lim, snapshot_create_s=0, snapshot_remove_s=0)


def test_halving_the_slots_roughly_doubles_the_window():
    estate = small_estate()
    wide, narrow = night(estate, 8, max_snapshots_per_host=8), night(estate, 4, max_snapshots_per_host=8)
    assert narrow.window_s / wide.window_s == pytest.approx(2.0, rel=0.1)
    # 24 disks of 8 GiB at 100 MiB/s per task on 8 slots: three waves of 81.92 s.
    assert wide.window_s == pytest.approx(3 * 8 * 1024 / 100, rel=0.01)
    assert narrow.first_exhausted == "proxy slots"


def test_simulation_never_exceeds_the_caps_and_names_the_binding_one():
    result = night(small_estate(), 16, max_snapshots_per_host=2, max_reads_per_datastore=3)
    assert result.peak_usage["snapshots on host"] == 2
    assert result.peak_usage["reads on datastore"] <= 3
    assert result.peak_usage["proxy slots"] <= 9  # 3 datastores x 3 reads, never the 16 slots
    assert result.waiting_s_by_resource[0][0] in ("reads on datastore", "snapshots on host")
    assert result.moved_bytes == pytest.approx(24 * 8 * GiB, rel=1e-6)


def test_a_slow_datastore_stretches_the_night():
    fast = night(small_estate(), 8)
    slow = night(small_estate(throughput=100), 8)  # 100 MiB/s shared by all readers of a datastore
    assert slow.window_s > 2 * fast.window_s
    assert slow.datastore_bound_s > 0


def test_snapshot_overheads_are_paid_per_vm():
    estate = small_estate(vms=1)
    lim = PlacementLimits(slots_per_proxy=1)
    bare = simulate_night(estate, 1, lim, snapshot_create_s=0, snapshot_remove_s=0)
    slow = simulate_night(estate, 1, lim, snapshot_create_s=20, snapshot_remove_s=30)
    assert slow.window_s - bare.window_s == pytest.approx(50)


def test_incremental_moves_only_the_changed_share():
    result = simulate_night(small_estate(), 1, PlacementLimits(slots_per_proxy=8), mode="incremental")
    assert result.moved_bytes == pytest.approx(0.1 * 24 * 8 * GiB, rel=1e-6)


def test_plan_renders_formula_and_simulations():
    plan = plan_window(small_estate(), 1, cores_per_proxy=4)
    console = Console(width=160, record=True)
    console.print(render_window_plan(plan))
    text = console.export_text()
    assert "Classic sizing" in text and "Simulated night" in text and "incremental" in text
    assert len(plan.simulations) == 3


def test_generated_estate_is_deterministic_and_hits_its_total():
    doc = {"generate": {"seed": 3, "vms": 50, "hosts": 5, "datastores": 4, "total": "10TiB"}}
    a, b = estate_from_dict(doc), estate_from_dict(doc)
    assert a == b
    assert a.total_bytes == pytest.approx(10 * TiB, rel=0.001)
    assert len(a.hosts) == 5 and len(a.datastores) <= 4


def test_shipped_5000_vm_estate_loads():
    estate = load_estate(ROOT / "configs" / "estate-5000.yaml")
    assert len(estate.vms) == 5000
    assert estate.total_bytes == pytest.approx(500 * TiB, rel=0.001)


def test_listed_estate_with_sizes_in_units(tmp_path):
    path = tmp_path / "estate.yaml"
    path.write_text(
        "datastores: [{name: ds1, throughput: 400MiB/s}]\n"
        "vms:\n  - {name: db, host: esx1, change_rate: 0.2, disks: [{size: 1.5TiB, datastore: ds1}]}\n"
    )
    estate = load_estate(path)
    assert estate.total_bytes == int(1.5 * TiB)
    assert estate.datastore_mib_s == {"ds1": 400}


@pytest.mark.parametrize(
    "doc, words",
    [
        ({}, "neither 'vms' nor 'generate'"),
        ({"vms": [{"name": "a", "host": "h"}]}, "lacks 'disks'"),
        ({"vms": [{"name": "a", "host": "h", "disks": [{"size": "lots", "datastore": "d"}]}]}, "not a size"),
        ({"generate": {"vms": 10}}, "generate lacks"),
    ],
)
def test_bad_estates_get_a_clear_error(doc, words):
    with pytest.raises(EstateError, match=words):
        estate_from_dict(doc)


def test_missing_estate_file_and_bad_window_are_clear_errors(tmp_path):
    with pytest.raises(EstateError, match="does not exist"):
        load_estate(tmp_path / "nope.yaml")
    with pytest.raises(WindowError):
        plan_window(small_estate(), 0)


def test_advice_names_what_to_change_when_the_night_does_not_fit():
    estate = small_estate()
    slot_bound = night(estate, 2, max_snapshots_per_host=8)
    assert "slots are the limit" in sim_advice(slot_bound, window_h=0.1)
    cap_bound = night(estate, 16, max_snapshots_per_host=1)
    assert "max_snapshots_per_host" in sim_advice(cap_bound, window_h=0.05)
    assert "to spare" in sim_advice(cap_bound, window_h=10)
    huge = small_estate(vms=1, disk=4 * TiB)
    assert "largest disk alone" in sim_advice(night(huge, 1), window_h=8)


@pytest.mark.parametrize("text, hours", [("8h", 8.0), ("90m", 1.5), ("1.5h", 1.5), ("6", 6.0)])
def test_window_durations_read_as_an_admin_writes_them(text, hours):
    assert parse_window_hours(text) == hours


@pytest.mark.parametrize("text", ["tonight", "0h", "900h"])
def test_unreadable_or_absurd_windows_are_rejected(text):
    with pytest.raises(WindowError):
        parse_window_hours(text)
