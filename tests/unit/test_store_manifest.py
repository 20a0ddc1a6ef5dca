import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.store.manifest import DiskManifest, merge_manifest

BLOCK = 4096
ids = st.binary(min_size=32, max_size=32)


@st.composite
def manifest_and_changes(draw):
    capacity = draw(st.integers(min_value=1, max_value=40 * BLOCK))
    blocks = draw(st.dictionaries(st.integers(0, (capacity - 1) // BLOCK).map(lambda b: b * BLOCK), ids))
    new_capacity = draw(st.integers(min_value=1, max_value=40 * BLOCK))
    changed = draw(
        st.dictionaries(st.integers(0, (new_capacity - 1) // BLOCK).map(lambda b: b * BLOCK), st.none() | ids)
    )
    manifest = DiskManifest.from_blocks(
        "disk", capacity=capacity, block_size=BLOCK, change_id="a/1", blocks=blocks
    )
    return manifest, blocks, changed, new_capacity


@given(manifest_and_changes())
def test_merge_equals_replaying_the_changes_on_a_map_of_blocks(case):
    manifest, blocks, changed, capacity = case
    merged = merge_manifest(manifest, changed, capacity=capacity, change_id="a/2")
    expected = {o: c for o, c in blocks.items() if o < capacity}
    for offset, chunk_id in changed.items():
        if chunk_id is None:
            expected.pop(offset, None)
        else:
            expected[offset] = chunk_id
    assert {o: c for o, _, c in merged.blocks()} == expected
    assert merged.change_id == "a/2" and merged.capacity == capacity


@given(manifest_and_changes())
def test_every_merged_block_length_stays_inside_the_disk(case):
    manifest, _, changed, capacity = case
    merged = merge_manifest(manifest, changed, capacity=capacity, change_id=None)
    for offset, length, _ in merged.blocks():
        assert 0 < length <= BLOCK and offset + length <= capacity


@given(manifest_and_changes())
def test_merging_no_changes_keeps_the_manifest(case):
    manifest, *_ = case
    assert merge_manifest(manifest, {}, capacity=manifest.capacity, change_id="a/1") == manifest


@given(manifest_and_changes())
def test_manifest_survives_its_arrow_form_and_answers_offset_lookups(case):
    manifest, blocks, *_ = case
    again = DiskManifest.from_arrow(manifest.to_arrow())
    assert again == manifest
    for block in range(manifest.capacity // BLOCK + 1):
        offset = block * BLOCK
        assert again.chunk_at(offset + 7) == blocks.get(offset)
    assert set(again.referenced_chunk_ids().to_pylist()) == set(blocks.values())


def test_merge_refuses_an_unaligned_changed_offset():
    manifest = DiskManifest.from_blocks("d", capacity=8 * BLOCK, block_size=BLOCK, change_id=None, blocks={})
    with pytest.raises(ValueError, match="not a block"):
        merge_manifest(manifest, {100: b"x" * 32}, capacity=8 * BLOCK, change_id=None)


def test_manifest_refuses_blocks_outside_the_disk():
    with pytest.raises(ValueError, match="inside the disk"):
        DiskManifest.from_blocks(
            "d", capacity=BLOCK, block_size=BLOCK, change_id=None, blocks={BLOCK: b"x" * 32}
        )
