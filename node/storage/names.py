"""Object names: signed records that bind a name to a manifest, and the index every node keeps.

A record says "name N is the object with manifest M (size S), put through node C at time T,
last updated at U by node G", or, deleted, that N no longer exists. It is canonical CBOR

    [["dcloud/object-name/v1", name, manifest_id, size, created_ms, creator, updated_ms,
      signer, deleted], signature]

signed with the signer's node key (the key inside its libp2p peer id), so any node can check
it. Records spread by gossip and are sent directly to the nodes holding the object's chunks;
a node that missed one asks its peers (`resolve`).

Which record wins, per name (`NameIndex.offer`):
- A record starts a *lineage* (created_ms, creator): only the creator signs it, with
  updated_ms == created_ms. A newer lineage replaces an older one (a later put of the same
  name overwrites it, as in an object store bucket); ties go to the larger creator id.
- Within a lineage, a later updated_ms wins: a delete (signed by the creator only) or a
  repair (any node may sign one, but the caller must first check that the new manifest
  describes the same bytes as the old one: `Manifest.same_content`).
- A record dated more than MAX_CLOCK_SKEW_MS in the future is refused, so a bad clock cannot
  pin a name forever.

The index is SQLite in the node's home (`objects.sqlite3`); it holds the winning record of
every name, deleted ones included (so an old record arriving late cannot bring a name back).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from node.codec import DecodeError, from_cbor, to_cbor
from node.gossip.swim_messages import is_node_id

RECORD_DOMAIN = "dcloud/object-name/v1"
MAX_NAME_CHARS = 255
MAX_RECORD_BYTES = 2048
MAX_CLOCK_SKEW_MS = 10 * 60 * 1000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*(/[A-Za-z0-9._~-]+)*$")
_HEX_ID = re.compile(r"^[0-9a-f]{64}$")

Verify = Callable[[str, bytes, bytes], bool]


class InvalidName(ValueError):
    """An object name that is not allowed."""


class InvalidRecord(DecodeError):
    """A name record that is malformed, badly signed, or not allowed to replace the held one."""


def validate_name(name: object) -> str:
    """Names: 1-255 characters of [A-Za-z0-9._~-] in '/'-separated parts, not starting with
    a dot or dash (no '..', no empty parts, nothing that needs escaping in a URL path)."""
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS or not NAME_RE.match(name):
        raise InvalidName(f"object name {str(name)[:80]!r} is not allowed: use 1-"
                          f"{MAX_NAME_CHARS} characters of A-Z a-z 0-9 . _ ~ - in /-separated "
                          "parts, starting with a letter or digit")
    if any(part in (".", "..") for part in name.split("/")):
        raise InvalidName(f"object name {name!r} has a '.' or '..' part")
    return name


@dataclass(frozen=True)
class NameRecord:
    name: str
    manifest_id: str
    size: int
    created_ms: int
    creator: str
    updated_ms: int
    signer: str
    deleted: bool
    signature: bytes = b""

    def body(self) -> list[Any]:
        return [RECORD_DOMAIN, self.name, self.manifest_id, self.size, self.created_ms,
                self.creator, self.updated_ms, self.signer, self.deleted]

    def signed_bytes(self) -> bytes:
        return to_cbor(self.body())

    def encode(self) -> bytes:
        return to_cbor([self.body(), self.signature])

    @property
    def lineage(self) -> tuple[int, str]:
        return (self.created_ms, self.creator)

    @property
    def order(self) -> tuple[int, str, int]:
        return (self.created_ms, self.creator, self.updated_ms)

    def signed(self, sign: Callable[[bytes], bytes]) -> NameRecord:
        return replace(self, signature=sign(self.signed_bytes()))

    @classmethod
    def decode(cls, data: bytes, verify: Verify) -> NameRecord:
        """Decode with limits, check every field and the signature (InvalidRecord if not)."""
        if type(data) is not bytes or len(data) > MAX_RECORD_BYTES:
            raise InvalidRecord(f"a name record is at most {MAX_RECORD_BYTES} bytes")
        try:
            raw = from_cbor(data, max_bytes=MAX_RECORD_BYTES, max_depth=3)
        except DecodeError as exc:
            raise InvalidRecord(f"malformed name record: {exc}") from exc
        if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], list) or \
                len(raw[0]) != 9 or raw[0][0] != RECORD_DOMAIN or \
                type(raw[1]) is not bytes or len(raw[1]) != 64:
            raise InvalidRecord("malformed name record")
        _, name, manifest_id, size, created, creator, updated, signer, deleted = raw[0]
        try:
            validate_name(name)
        except InvalidName as exc:
            raise InvalidRecord(str(exc)) from exc
        if type(manifest_id) is not str or not _HEX_ID.match(manifest_id):
            raise InvalidRecord("manifest id must be 64 lowercase hex digits")
        for value, what in ((size, "size"), (created, "created_ms"), (updated, "updated_ms")):
            if type(value) is not int or not 0 <= value < 2**63:
                raise InvalidRecord(f"{what} must be a non-negative integer")
        if not (is_node_id(creator) and is_node_id(signer)):
            raise InvalidRecord("creator and signer must be node ids")
        if type(deleted) is not bool:
            raise InvalidRecord("deleted must be a boolean")
        if updated < created:
            raise InvalidRecord("updated before it was created")
        record = cls(name, manifest_id, size, created, creator, updated, signer, deleted,
                     raw[1])
        if record.encode() != data:
            raise InvalidRecord("name record is not in canonical form")
        if not verify(signer, record.signed_bytes(), record.signature):
            raise InvalidRecord(f"name record for {name!r} is not signed by {signer}")
        return record


def new_record(name: str, manifest_id: str, size: int, node_id: str, now_ms: int,
               sign: Callable[[bytes], bytes]) -> NameRecord:
    return NameRecord(validate_name(name), manifest_id, size, now_ms, node_id, now_ms, node_id,
                      False).signed(sign)


def update_record(held: NameRecord, node_id: str, now_ms: int, sign: Callable[[bytes], bytes],
                  *, manifest_id: str | None = None, deleted: bool = False) -> NameRecord:
    """A later record of the same lineage: a repair (new manifest id) or a delete."""
    return replace(held, manifest_id=manifest_id or held.manifest_id,
                   updated_ms=max(now_ms, held.updated_ms + 1), signer=node_id,
                   deleted=deleted, signature=b"").signed(sign)


@dataclass(frozen=True)
class Offer:
    """What `NameIndex.offer` did with a record."""

    accepted: bool
    reason: str
    replaced: NameRecord | None = None
    needs_content_check: bool = False  # a repair: the caller must compare manifests first


def judge(record: NameRecord, held: NameRecord | None, now_ms: int) -> Offer:
    """May `record` replace `held` (the pure rule, no I/O)?"""
    if record.updated_ms > now_ms + MAX_CLOCK_SKEW_MS:
        return Offer(False, "dated in the future")
    starts_lineage = held is None or record.lineage != held.lineage
    if starts_lineage:
        if record.signer != record.creator or record.updated_ms != record.created_ms or \
                record.deleted:
            # A later record of a lineage we do not hold: we cannot check it; wait for the
            # lineage's first record (resolve asks peers for it).
            if held is None or record.lineage > held.lineage:
                return Offer(False, "an update of a lineage this node does not hold")
            return Offer(False, "older than the held record")
        if held is not None and record.lineage < held.lineage:
            return Offer(False, "older than the held record")
        return Offer(True, "new object" if held is None else "a newer put", held)
    assert held is not None
    if record.updated_ms <= held.updated_ms:
        return Offer(False, "not newer than the held record")
    if held.deleted:
        return Offer(False, "the object was deleted")
    if record.deleted:
        if record.signer != record.creator:
            return Offer(False, "only the node that put an object may delete it")
        return Offer(True, "deleted", held)
    if record.manifest_id == held.manifest_id or record.size != held.size:
        return Offer(False, "a repair must name a new manifest of the same size")
    return Offer(True, "repaired", held, needs_content_check=True)


class NameIndex:
    """The winning record of every name this node has heard of (SQLite, thread-safe)."""

    def __init__(self, path: Path, verify: Verify) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._verify = verify
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, "
                         "record BLOB NOT NULL, manifest_id TEXT NOT NULL, "
                         "deleted INTEGER NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS names_by_manifest ON names (manifest_id)")

    def close(self) -> None:
        self._db.close()

    def get(self, name: str) -> NameRecord | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM names WHERE name = ?",
                                   (name,)).fetchone()
        # Records in our own index were checked when stored; decode checks them again, which
        # also guards against a damaged file.
        return None if row is None else NameRecord.decode(bytes(row[0]), self._verify)

    def live(self, after: str = "", limit: int = 1000) -> list[NameRecord]:
        """Records of names that exist (not deleted), in name order, after `after`."""
        return self._page("deleted = 0 AND", after, limit)

    def all(self, after: str = "", limit: int = 1000) -> list[NameRecord]:
        """Every record, deleted ones included (what a peer syncing its index needs)."""
        return self._page("", after, limit)

    def _page(self, where: str, after: str, limit: int) -> list[NameRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT record FROM names WHERE {where} name > ? "
                                    "ORDER BY name LIMIT ?", (after, limit)).fetchall()
        return [NameRecord.decode(bytes(r[0]), self._verify) for r in rows]

    def references(self, manifest_id: str) -> bool:
        """Does a live name still point at this manifest?"""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM names WHERE manifest_id = ? AND deleted = 0",
                                   (manifest_id,)).fetchone()
        return row is not None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM names WHERE deleted = 0")
                       .fetchone()[0])

    def offer(self, record: NameRecord, *, now_ms: int | None = None,
              same_content: Callable[[NameRecord, NameRecord], bool] | None = None) -> Offer:
        """Store `record` if it wins over the held one (see the module docstring).

        A repair is stored only when `same_content(held, record)` says the new manifest
        describes the same bytes; without that callable, repairs are refused.
        """
        now = int(time.time() * 1000) if now_ms is None else now_ms
        held = self.get(record.name)
        verdict = judge(record, held, now)
        if not verdict.accepted:
            return verdict
        if verdict.needs_content_check:
            assert held is not None
            if same_content is None or not same_content(held, record):
                return Offer(False, "the repaired manifest does not describe the same object")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?, ?)",
                             (record.name, record.encode(), record.manifest_id,
                              int(record.deleted)))
        return verdict
