"""Client-side sealing of segments: round trip, and any tampering (bytes, position, key) fails
authentication."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.storage.sealing import (
    KEY_BYTES,
    SALT_BYTES,
    SEAL_OVERHEAD_BYTES,
    KeyFileInvalid,
    SealingError,
    SegmentSealer,
    SegmentTampered,
    new_salt,
    read_key_file,
    segment_nonce,
    write_key_file,
)


def test_sealed_segments_round_trip_and_hide_the_plaintext() -> None:
    sealer = SegmentSealer(os.urandom(KEY_BYTES), new_salt())
    for index, plain in enumerate([b"", b"x", os.urandom(100_000)]):
        sealed = sealer.seal(index, plain)
        assert len(sealed) == len(plain) + SEAL_OVERHEAD_BYTES
        assert sealer.open(index, sealed) == plain
        if len(plain) > 16:
            assert plain[:16] not in sealed


def test_altered_bytes_fail_authentication() -> None:
    sealer = SegmentSealer(os.urandom(KEY_BYTES), new_salt())
    sealed = bytearray(sealer.seal(0, b"secret segment"))
    sealed[5] ^= 1
    with pytest.raises(SegmentTampered, match="segment 0"):
        sealer.open(0, bytes(sealed))
    with pytest.raises(SegmentTampered):
        sealer.open(0, b"short")


def test_a_segment_moved_to_another_index_or_object_fails_authentication() -> None:
    key, salt = os.urandom(KEY_BYTES), new_salt()
    sealer = SegmentSealer(key, salt)
    sealed = sealer.seal(3, b"segment three")
    with pytest.raises(SegmentTampered):
        sealer.open(4, sealed)
    with pytest.raises(SegmentTampered):
        SegmentSealer(key, new_salt()).open(3, sealed)
    with pytest.raises(SegmentTampered):
        SegmentSealer(os.urandom(KEY_BYTES), salt).open(3, sealed)


def test_nonces_are_unique_per_segment_and_per_object() -> None:
    salt = new_salt()
    assert len(segment_nonce(salt, 0)) == 24
    assert len({segment_nonce(salt, i) for i in range(1_000)}) == 1_000
    assert segment_nonce(salt, 1) != segment_nonce(new_salt(), 1)
    # The same plaintext at two indexes seals differently.
    sealer = SegmentSealer(os.urandom(KEY_BYTES), salt)
    assert sealer.seal(0, b"same") != sealer.seal(1, b"same")


@pytest.mark.parametrize(("key", "salt"), [
    (b"\0" * 31, b"\0" * SALT_BYTES), (b"\0" * 33, b"\0" * SALT_BYTES),
    (b"\0" * KEY_BYTES, b"\0" * 15), ("k" * 32, b"\0" * SALT_BYTES),
])
def test_bad_keys_and_salts_are_refused(key: bytes, salt: bytes) -> None:
    with pytest.raises(SealingError):
        SegmentSealer(key, salt)


def test_negative_or_huge_segment_indexes_are_refused() -> None:
    with pytest.raises(SealingError):
        segment_nonce(new_salt(), -1)
    with pytest.raises(SealingError):
        segment_nonce(new_salt(), 2**64)


def test_key_files_hold_32_raw_bytes_or_64_hex_digits(tmp_path: Path) -> None:
    raw = os.urandom(KEY_BYTES)
    (tmp_path / "raw.key").write_bytes(raw)
    assert read_key_file(tmp_path / "raw.key") == raw
    (tmp_path / "hex.key").write_text(raw.hex() + "\n")
    assert read_key_file(tmp_path / "hex.key") == raw
    made = write_key_file(tmp_path / "new.key")
    assert read_key_file(tmp_path / "new.key") == made
    assert (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyFileInvalid, match="overwrite"):
        write_key_file(tmp_path / "new.key")


@pytest.mark.parametrize("content", [
    b"", b"\0" * 31, b"\0" * 33, b"zz" * 32, ("ab" * 31).encode(), b"\0" * 10_000,
])
def test_bad_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileInvalid, match="32 raw bytes or 64 hex"):
        read_key_file(path)


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileInvalid, match="does not exist"):
        read_key_file(tmp_path / "absent.key")
