"""Job configuration: good files load, every malformed one gets one line naming the problem."""

from __future__ import annotations

import pytest

from pipeline.config import MiB, load_config, parse_config, parse_size
from pipeline.errors import ConfigError

GOOD = """\
name: nightly
vcenter:
  host: vc.example.com
  user: backup@vsphere.local
  password_env: VMPUMP_VC_PASSWORD
repository:
  url: s3://vmpump-backups/site-a
  endpoint_url: https://minio.example.com:9000
  addressing_style: path
backup:
  block_size: 2MiB
  quiesce: require
placement:
  max_snapshots_per_host: 2
"""


def test_a_good_file_loads_with_defaults_filled_in():
    cfg = parse_config(GOOD)
    assert cfg.backup.block_size == 2 * MiB
    assert cfg.backup.compression_level == 3
    assert cfg.vcenter is not None and cfg.vcenter.port == 443 and cfg.vcenter.insecure is False
    assert cfg.placement.latency_stop_ms == 20 and cfg.placement.latency_slow_ms == 30
    assert cfg.selection.matches("anything")


def test_the_shipped_example_configs_are_valid():
    from pathlib import Path

    files = sorted(Path("configs").glob("*.yaml"))
    assert any(f.name == "demo.yaml" for f in files)
    for f in files:
        if f.name.startswith("estate"):
            continue  # what-if estates for `vmpump plan`, not job files
        load_config(f)


def test_password_comes_from_the_named_environment_variable(monkeypatch):
    cfg = parse_config(GOOD)
    monkeypatch.setenv("VMPUMP_VC_PASSWORD", "s3cret")
    assert cfg.vcenter.password() == "s3cret"
    monkeypatch.delenv("VMPUMP_VC_PASSWORD")
    with pytest.raises(ConfigError, match="VMPUMP_VC_PASSWORD"):
        cfg.vcenter.password()


def test_selection_globs_include_and_exclude():
    cfg = parse_config(GOOD + "selection:\n  vms: ['db-*', 'web-*']\n  exclude: ['*-test']\n")
    assert cfg.selection.matches("db-01")
    assert not cfg.selection.matches("db-test")
    assert not cfg.selection.matches("app-01")


@pytest.mark.parametrize(
    "size,expected", [(4096, 4096), ("1MiB", MiB), ("512 KiB", 512 << 10), ("2G", 2 << 30)]
)
def test_sizes_parse_in_binary_units(size, expected):
    assert parse_size(size) == expected


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


MALFORMED = [
    ("not yaml", "name: x\nbackup: [unclosed\nplacement: {}\n", "line 3", "not valid YAML"),
    ("a list at the top", "- a\n- b\n", "", "mapping"),
    ("unknown top-level key", GOOD + "repositry:\n  url: x\n", "line 15", "unknown setting repositry"),
    ("missing repository", GOOD.split("repository:")[0], "", "repository is required"),
    ("bad repository scheme", _replace("s3://vmpump-backups/site-a", "ftp://x/y"), "line 7", "file:///"),
    (
        "relative file path",
        _replace("s3://vmpump-backups/site-a", "file://relative/dir"),
        "line 7",
        "absolute",
    ),
    ("bad bucket name", _replace("s3://vmpump-backups/site-a", "s3://UPPER_case/x"), "line 7", "bucket name"),
    ("block size not a power of two", _replace("2MiB", "3MiB"), "line 11", "power of two"),
    ("block size garbage", _replace("2MiB", "lots"), "line 11", "size such as"),
    ("block size too big", _replace("2MiB", "16MiB"), "line 11", "256KiB to 8MiB"),
    ("quiesce typo", _replace("quiesce: require", "quiesce: always"), "line 12", "backup.quiesce"),
    (
        "password on the command line style",
        _replace("password_env: VMPUMP_VC_PASSWORD", "password: hunter2"),
        "line 5",
        "unknown setting vcenter.password",
    ),
    ("no password source", _replace("  password_env: VMPUMP_VC_PASSWORD\n", ""), "line 2", "password_env"),
    (
        "port out of range",
        _replace("host: vc.example.com", "host: vc.example.com\n  port: 70000"),
        "line 4",
        "vcenter.port",
    ),
    (
        "negative limit",
        _replace("max_snapshots_per_host: 2", "max_snapshots_per_host: 0"),
        "line 14",
        "max_snapshots_per_host",
    ),
    ("latency thresholds reversed", GOOD + "  latency_stop_ms: 40\n", "line 13", "latency_slow_ms"),
    ("vsphere without vcenter", "name: x\nrepository:\n  url: file:///tmp/r\n", "", "vcenter section"),
    ("bad job name", _replace("name: nightly", "name: 'night ly!'"), "line 1", "name"),
    (
        "endpoint without scheme",
        _replace("https://minio.example.com:9000", "minio:9000"),
        "line 8",
        "endpoint_url",
    ),
]


@pytest.mark.parametrize("label,text,line,needle", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_file_gets_one_line_naming_the_problem(label, text, line, needle):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "job.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("job.yaml")
    assert needle in message
    if line:
        assert f"job.yaml {line}:" in message
    assert info.value.hint


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_an_empty_password_file_is_a_clear_error(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("\n")
    cfg = parse_config(_replace("password_env: VMPUMP_VC_PASSWORD", f"password_file: {pw}"))
    with pytest.raises(ConfigError, match="empty"):
        cfg.vcenter.password()
