"""The consensus write-ahead log: every input fed to the core at the current height.

A restarted validator replays the log into a fresh core and so comes back at the same
height, round, step, lock and valid value. Records are appended before the outputs they
cause are acted on, and the file is fsynced before any message we sign leaves the node.
Each record: 4-byte big-endian length, 4-byte CRC32, canonical CBOR body. A torn record at
the tail (a crash mid-write) is dropped on open.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.codec import DecodeError, from_cbor, to_cbor

MAX_RECORD_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">II")


class ConsensusWAL:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._records, good_bytes = _read_records(path)
        self._file = open(path, "ab")  # noqa: SIM115 - owned until close()
        if self._file.tell() != good_bytes:
            self._file.truncate(good_bytes)  # drop a torn tail
            self._file.seek(good_bytes)
        self._dirty = False

    def records(self) -> list[Any]:
        """What was on disk when the log was opened."""
        return list(self._records)

    def append(self, record: Any) -> None:
        body = to_cbor(record)
        self._file.write(_HEADER.pack(len(body), zlib.crc32(body)) + body)
        self._dirty = True

    def sync(self) -> None:
        if self._dirty:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._dirty = False

    def start_height(self, height: int) -> None:
        """Empty the log for a new height: what came before is in the block store."""
        self._file.close()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            body = to_cbor(["height", height])
            f.write(_HEADER.pack(len(body), zlib.crc32(body)) + body)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self._records = [["height", height]]
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._dirty = False

    def close(self) -> None:
        self.sync()
        self._file.close()


def _read_records(path: Path) -> tuple[list[Any], int]:
    records: list[Any] = []
    good = 0
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return records, 0
    for offset, record in _iter(data):
        records.append(record)
        good = offset
    return records, good


def _iter(data: bytes) -> Iterator[tuple[int, Any]]:
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        if length > MAX_RECORD_BYTES or end > len(data):
            return
        body = data[start:end]
        if zlib.crc32(body) != crc:
            return
        try:
            record = from_cbor(body, max_bytes=MAX_RECORD_BYTES, max_depth=32)
        except DecodeError:
            return
        pos = end
        yield pos, record
