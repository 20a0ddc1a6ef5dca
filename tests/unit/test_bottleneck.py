import pytest
from rich.console import Console

from pipeline.engine.bottleneck import BottleneckInputError, analyze_bottleneck, render_bottleneck


def test_busy_hashing_and_compressing_names_proxy_cpu_and_sizes_more_proxies():
    # 8 workers for 100 s: 800 worker-seconds; hash + compress + dedup busy 760 s = 95%.
    report = analyze_bottleneck(
        {"source_read": 100, "hash": 300, "compress": 400, "dedup": 60, "target_write": 80},
        {"source_read": 40 * 2**30, "hash": 40 * 2**30},
        wall_s=100,
        workers=8,
        cores_per_proxy=8,
    )
    assert report.bottleneck == "proxy CPU"
    assert dict(report.resource_shares)["proxy CPU"] == pytest.approx(0.95)
    # 8 * 0.95 / 0.70 = 10.9 cores needed, 2.9 more: one proxy of 8 cores.
    assert report.advice == "proxy CPU 95% busy: add 1 proxy of 8 cores"
    source = next(s for s in report.stages if s.stage == "source_read")
    assert source.mib_per_s == pytest.approx(40 * 1024 / 100)


def test_twice_the_cpu_load_asks_for_more_proxies():
    report = analyze_bottleneck({"hash": 800, "compress": 800}, {}, wall_s=100, workers=8, cores_per_proxy=8)
    assert report.advice == "proxy CPU 200% busy: add 2 proxies of 8 cores"


@pytest.mark.parametrize(
    "stage, resource, words",
    [
        ("source_read", "source", "transport"),
        ("target_write", "network/target", "object store"),
        ("admission_wait", "admission/scheduling", "latency"),
    ],
)
def test_each_saturated_resource_gets_its_own_advice(stage, resource, words):
    report = analyze_bottleneck({stage: 90, "hash": 10}, {}, wall_s=100, workers=1)
    assert report.bottleneck == resource
    assert words in report.advice


def test_nothing_saturated_means_the_run_was_underfed():
    report = analyze_bottleneck({"hash": 30, "source_read": 20}, {}, wall_s=100, workers=1)
    assert report.bottleneck == "none"
    assert "underfed" in report.advice


def test_unknown_stage_or_empty_run_is_a_clear_error():
    with pytest.raises(BottleneckInputError, match="unknown stages"):
        analyze_bottleneck({"upload": 1}, {}, wall_s=1, workers=1)
    with pytest.raises(BottleneckInputError):
        analyze_bottleneck({}, {}, wall_s=0, workers=1)


def test_renderer_shows_every_stage_and_the_advice():
    report = analyze_bottleneck({"hash": 95}, {}, wall_s=100, workers=1)
    console = Console(width=160, record=True)
    console.print(render_bottleneck(report))
    text = console.export_text()
    assert "admission_wait" in text and "proxy CPU 95% busy" in text
