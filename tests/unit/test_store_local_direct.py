"""Large objects of a local repository are written with O_DIRECT where the file system allows it,
byte-exact at any length, and through the page cache where it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.store import local
from pipeline.store.local import LocalStore

MiB = 1 << 20


def _parts(sizes: list[int]) -> list[bytes]:
    return [os.urandom(n) for n in sizes]


@pytest.mark.parametrize(
    "sizes",
    [
        [MiB],  # exactly the threshold, one aligned block run
        [3 * MiB + 5, 17, MiB - 1],  # odd lengths: the tail is padded, then truncated
        [(4 << 20) * 2],  # exactly two staging buffers
        [100_000] * 90,  # many small parts spanning staging buffers
    ],
)
def test_large_objects_read_back_byte_identical(tmp_path: Path, sizes: list[int]) -> None:
    store = LocalStore(tmp_path)
    parts = _parts(sizes)
    store.put("packs/ab/x", parts)
    assert store.get("packs/ab/x") == b"".join(parts)
    assert store.size("packs/ab/x") == sum(sizes)
    assert store.list_keys("packs/") == ["packs/ab/x"], "no temporary file is left behind"


def test_direct_io_is_used_where_the_file_system_allows_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert store._direct, "Linux has O_DIRECT: a new store tries it"
    store.put("packs/cd/y", _parts([2 * MiB + 1]))
    probe = tmp_path / "probe"
    try:  # the same test the store makes: does this file system take O_DIRECT?
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        assert not store._direct, "a refusing file system turns direct writes off"
    else:
        assert store._direct


def test_a_file_system_that_refuses_direct_io_is_written_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse_direct(path, flags, *args):  # noqa: ANN001, ANN202 - os.open's signature
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")  # what tmpfs answers
        return real_open(path, flags, *args)

    monkeypatch.setattr(local.os, "open", refuse_direct)
    store = LocalStore(tmp_path)
    parts = _parts([MiB + 3, 4096])
    store.put("packs/ef/z", parts)
    assert store.get("packs/ef/z") == b"".join(parts)
    assert not store._direct, "the store stops trying after the first refusal"
    store.put("packs/ef/w", parts)  # and goes on through the page cache
    assert store.get("packs/ef/w") == b"".join(parts)


def test_small_objects_never_take_the_direct_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    called = []
    monkeypatch.setattr(store, "_put_direct", lambda *a: called.append(a) or True)
    store.put("config", b"{}")
    assert store.get("config") == b"{}" and not called
