from pipeline.engine.latency import LatencyGate, LatencySource, ScriptedLatencySource, SequenceLatencySource


def gate(**kw):
    return LatencyGate(stop_ms=20, slow_ms=30, max_reads=8, **kw)


def test_datastore_above_stop_threshold_takes_no_new_tasks_and_recovers():
    g = gate()
    assert g.may_start("ds1")
    g.observe({"ds1": 25, "ds2": 5})
    assert not g.may_start("ds1") and g.may_start("ds2")
    assert g.reader_delay_s("ds1") == 0  # between the thresholds: stop new tasks, do not slow
    g.observe({"ds1": 12})
    assert g.may_start("ds1")
    assert [d.action for d in g.decisions] == ["stop", "go"]
    assert "25.0 ms > stop threshold 20 ms" in g.decisions[0].reason


def test_readers_pause_above_slow_threshold_and_more_the_worse_it_gets():
    g = gate()
    g.observe({"ds1": 35})
    mild = g.reader_delay_s("ds1")
    g.observe({"ds1": 200})
    bad = g.reader_delay_s("ds1")
    assert 0 < mild < bad <= 1.0
    g.observe({"ds1": 10})
    assert g.reader_delay_s("ds1") == 0
    assert [d.action for d in g.decisions] == ["stop", "slow", "go", "unslow"]


def test_unchanged_state_is_not_logged_again():
    g = gate()
    for _ in range(5):
        g.observe({"ds1": 25})
    assert len(g.decisions) == 1


def test_missing_datastore_or_no_value_keeps_its_last_state():
    g = gate()
    g.observe({"ds1": 25})
    g.observe({})
    g.observe({"ds1": -1})  # vCenter's "no value"
    g.observe({"ds1": float("nan")})
    assert not g.may_start("ds1")
    assert g.latency_ms("ds1") == 25


def test_adaptive_limit_halves_above_target_and_grows_by_one_below():
    g = gate(adaptive=True)
    limits = []
    for latency in [25, 25, 25, 25, 5, 5, 5]:
        g.observe({"ds1": latency})
        limits.append(g.read_limit("ds1"))
    assert limits == [4, 2, 1, 1, 2, 3, 4]
    for _ in range(10):
        g.observe({"ds1": 5})
    assert g.read_limit("ds1") == 8  # never above the configured maximum
    shrinks = [d for d in g.decisions if d.action == "shrink"]
    assert [d.read_limit for d in shrinks] == [4, 2, 1]


def test_static_mode_never_moves_the_limit():
    g = gate()
    g.observe({"ds1": 100})
    assert g.read_limit("ds1") == 8


def test_a_failed_poll_is_a_logged_decision_that_changes_nothing():
    g = gate()
    g.observe({"ds1": 25})
    g.source_failed(TimeoutError("vCenter did not answer"))
    assert not g.may_start("ds1")
    assert g.decisions[-1].action == "source-error"


def test_scripted_source_reads_back_what_was_set(tmp_path):
    source = ScriptedLatencySource(tmp_path / "latency.json")
    assert source.datastore_latency_ms() == {}
    source.set({"ds1": 22.5})
    assert source.datastore_latency_ms() == {"ds1": 22.5}


def test_sequence_source_repeats_its_last_sample():
    source = SequenceLatencySource([{"a": 1}, {"a": 2}])
    assert [source.datastore_latency_ms()["a"] for _ in range(4)] == [1, 2, 2, 2]


def test_any_object_with_the_method_is_a_latency_source():
    class FromVcenter:
        def datastore_latency_ms(self) -> dict[str, float]:
            return {}

    assert isinstance(FromVcenter(), LatencySource)
