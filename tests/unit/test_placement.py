import pytest

from pipeline.engine.placement import (
    GiB,
    PlacementError,
    PlacementLimits,
    default_slots,
    disk_task_options,
    local_node_resources,
    proxy_resources,
)


def test_default_slots_follow_one_core_and_two_gib_per_task():
    assert default_slots(cores=16, ram_gib=64) == 16
    assert default_slots(cores=16, ram_gib=20) == 10  # RAM is the tighter limit
    assert default_slots(cores=8, ram_gib=64, cores_per_task=2) == 4


def test_a_proxy_too_small_for_one_task_is_a_clear_error():
    with pytest.raises(PlacementError, match="room for no task"):
        default_slots(cores=1, ram_gib=1)


def test_disk_task_options_ask_for_one_slot_and_the_task_size():
    limits = PlacementLimits(cpus_per_task=0.5, memory_per_task_bytes=3 * GiB)
    assert disk_task_options(limits) == {
        "resources": {"backup_slots": 1},
        "num_cpus": 0.5,
        "memory": 3 * GiB,
    }


def test_local_node_advertises_itself_as_a_proxy():
    assert local_node_resources(PlacementLimits(), cores=8, ram_gib=32) == {"proxy": 1, "backup_slots": 8}
    assert local_node_resources(PlacementLimits(slots_per_proxy=3)) == {"proxy": 1, "backup_slots": 3}
    # A laptop below the classic rule still gets one slot so the demo runs.
    assert local_node_resources(PlacementLimits(), cores=1, ram_gib=1)["backup_slots"] == 1


def test_proxy_resources_refuse_zero_slots():
    with pytest.raises(PlacementError):
        proxy_resources(0)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"max_reads_per_datastore": 0}, "max_reads_per_datastore"),
        ({"latency_stop_ms": 30, "latency_slow_ms": 20}, "latency thresholds"),
        ({"max_disks_per_host": 80}, "NFC"),
        ({"slots_per_proxy": 0}, "slots_per_proxy"),
    ],
)
def test_impossible_limits_are_rejected_with_a_hint(kwargs, words):
    with pytest.raises(PlacementError, match=words) as caught:
        PlacementLimits(**kwargs)
    assert caught.value.hint
