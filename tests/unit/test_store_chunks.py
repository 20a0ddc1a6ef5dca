import os

import blake3
import pytest

from pipeline.store.chunks import (
    FOOTER_SIZE,
    PackWriter,
    decode_chunk,
    encode_chunk,
    is_all_zero,
    pack_key,
    read_pack_entries,
)
from pipeline.store.errors import ObjectCorruptError
from pipeline.store.local import LocalStore


def test_compressible_block_is_stored_as_zstd_and_decodes_to_itself():
    block = b"the quick brown fox " * 10000
    encoded = encode_chunk(block, 3)
    assert encoded.codec == "zstd" and len(encoded.payload) < len(block)
    assert decode_chunk(encoded.codec, encoded.payload, encoded.raw_length) == block


def test_random_block_is_stored_raw_because_compression_does_not_shrink_it():
    block = os.urandom(256 << 10)
    encoded = encode_chunk(memoryview(block), 3)
    assert encoded.codec == "raw" and encoded.payload == block


def test_zero_check_accepts_bytes_and_memoryviews():
    assert is_all_zero(bytes(1 << 20)) and is_all_zero(memoryview(bytearray(4096)))
    assert not is_all_zero(bytes(4095) + b"\x01")
    assert is_all_zero(b"")


def test_pack_trailer_lists_every_chunk_and_rebuilds_the_index(tmp_path):
    store = LocalStore(tmp_path)
    writer = PackWriter(store, pack_size=1 << 30)
    chunks = {bytes([i]) * 32: encode_chunk(os.urandom(1000) * (i + 1), 3) for i in range(5)}
    for cid, enc in chunks.items():
        assert writer.add(cid, enc) is None
    sealed = writer.seal()
    assert writer.seal() is None
    uploaded = writer.upload(sealed)
    assert read_pack_entries(store, sealed.pack_id) == uploaded
    for entry in uploaded:
        payload = sealed.data[entry.offset : entry.offset + entry.length]
        assert payload == chunks[entry.chunk_id].payload


def test_pack_writer_seals_once_the_target_size_is_reached():
    writer = PackWriter(LocalStore("/nonexistent-not-written"), pack_size=3000)
    sealed = [writer.add(bytes([i]) * 32, encode_chunk(os.urandom(1000), 3)) for i in range(7)]
    assert [s is not None for s in sealed] == [False, False, True, False, False, True, False]
    assert len(writer.seal().entries) == 1


def test_a_damaged_pack_trailer_is_reported(tmp_path):
    store = LocalStore(tmp_path)
    writer = PackWriter(store, pack_size=1 << 30)
    writer.add(b"\x01" * 32, encode_chunk(b"x" * 5000, 3))
    sealed = writer.seal()
    damaged = bytearray(sealed.data)
    damaged[-60] ^= 0xFF
    store.put(sealed.key, bytes(damaged))
    with pytest.raises(ObjectCorruptError, match="trailer of pack"):
        read_pack_entries(store, sealed.pack_id)


def test_a_pack_is_named_by_its_trailer_and_a_pack_under_another_name_is_refused(tmp_path):
    store = LocalStore(tmp_path)
    writer = PackWriter(store, pack_size=1 << 30)
    writer.add(b"\x02" * 32, encode_chunk(b"y" * 5000, 3))
    sealed = writer.seal()
    assert sealed.pack_id == blake3.blake3(sealed.data[-(49 + FOOTER_SIZE) :]).hexdigest()
    other = "0" * 64
    store.put(pack_key(other), sealed.data)  # a well-formed pack whose name is not its own
    with pytest.raises(ObjectCorruptError, match="does not match the pack's name"):
        read_pack_entries(store, other)


def test_a_block_whose_samples_do_not_compress_is_stored_raw_without_compressing_it_whole(monkeypatch):
    import pipeline.store.chunks as chunks

    whole = []
    real = chunks._compressor

    def spy(level):  # noqa: ANN001, ANN202
        compressor = real(level)
        return compressor if level == 1 else whole.append(level) or compressor

    monkeypatch.setattr(chunks, "_compressor", spy)
    random_block = os.urandom(1 << 20)
    encoded = encode_chunk(random_block, 3)
    assert encoded.codec == "raw" and encoded.payload == random_block
    assert whole == [], "incompressible data is never compressed whole"


def test_a_block_with_a_compressible_part_is_still_compressed():
    block = bytearray(os.urandom(1 << 20))
    block[(1 << 20) - (1 << 17) :] = bytes(1 << 17)  # an eighth of zeros at the end
    encoded = encode_chunk(bytes(block), 3)
    assert encoded.codec == "zstd" and len(encoded.payload) < len(block) - (100 << 10)
    assert decode_chunk(encoded.codec, encoded.payload, len(block)) == block
    text = (b"log line 4711: all is well\n" * 50000)[: 1 << 20]
    assert encode_chunk(text, 3).codec == "zstd"
