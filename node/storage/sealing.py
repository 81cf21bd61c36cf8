"""Client-side encryption of object segments with pynacl's SecretBox (XSalsa20-Poly1305).

With a key, each segment is sealed before it is erasure-coded, so storage nodes hold only
ciphertext shards. The key never leaves the client and is never in the manifest.

Nonces: SecretBox takes a 24-byte nonce that must never repeat under one key. Each object gets
16 fresh random bytes (its salt, stored in the manifest) and segment i is sealed with the nonce
`salt || i` (i as 8 big-endian bytes). Derived rather than random-per-segment because:
- nothing per segment has to be stored or transmitted (the manifest carries one salt);
- the nonce binds each ciphertext to its position: a segment swapped or moved to another index
  fails authentication instead of decrypting in the wrong place;
- uniqueness across objects rests on the 128-bit random salt, which makes a repeat as unlikely
  as a collision of random 128-bit values, and within an object on distinct indexes.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

SCHEME = "xsalsa20poly1305/salt16-index8"
KEY_BYTES = SecretBox.KEY_SIZE  # 32
SALT_BYTES = 16
SEAL_OVERHEAD_BYTES = SecretBox.MACBYTES  # 16: the Poly1305 tag
MAX_SEGMENT_INDEX = 2**64 - 1
# A key file is 32 raw bytes or 64 hex digits (with an optional trailing newline).
MAX_KEY_FILE_BYTES = 128


class SealingError(Exception):
    """A segment could not be sealed or opened."""


class KeyFileInvalid(SealingError):
    """A key file that is missing, unreadable, or not exactly one 32-byte key."""


class SegmentTampered(SealingError):
    """A sealed segment failed authentication: wrong key, wrong index, or altered bytes."""


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def segment_nonce(salt: bytes, index: int) -> bytes:
    """The 24-byte nonce of segment `index` of the object with this salt."""
    if type(salt) is not bytes or len(salt) != SALT_BYTES:
        raise SealingError(f"salt must be {SALT_BYTES} bytes")
    if type(index) is not int or not 0 <= index <= MAX_SEGMENT_INDEX:
        raise SealingError(f"segment index must be in [0, {MAX_SEGMENT_INDEX}]")
    return salt + index.to_bytes(8, "big")


class SegmentSealer:
    """Seals and opens the segments of one object (one key, one salt)."""

    def __init__(self, key: bytes, salt: bytes) -> None:
        if type(key) is not bytes or len(key) != KEY_BYTES:
            raise SealingError(f"an encryption key is {KEY_BYTES} bytes")
        segment_nonce(salt, 0)  # validates the salt
        self._box = SecretBox(key)
        self.salt = salt

    def seal(self, index: int, segment: bytes) -> bytes:
        """Ciphertext and tag of segment `index` (SEAL_OVERHEAD_BYTES longer than it)."""
        return bytes(self._box.encrypt(segment, segment_nonce(self.salt, index)).ciphertext)

    def open(self, index: int, sealed: bytes) -> bytes:
        """The plaintext of sealed segment `index`; SegmentTampered if it fails to authenticate."""
        if len(sealed) < SEAL_OVERHEAD_BYTES:
            raise SegmentTampered(f"sealed segment {index} is shorter than its tag")
        try:
            return bytes(self._box.decrypt(sealed, segment_nonce(self.salt, index)))
        except CryptoError as exc:
            raise SegmentTampered(f"segment {index} failed authentication (wrong key or "
                                  "altered data)") from exc


def read_key_file(path: Path) -> bytes:
    """Load a 32-byte key from a file holding it raw or as 64 hex digits."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeyFileInvalid(f"encryption key file {path} does not exist") from exc
    except OSError as exc:
        raise KeyFileInvalid(f"cannot read encryption key file {path}: {exc.strerror}") from exc
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeyFileInvalid(f"encryption key file {path} must hold exactly {KEY_BYTES} raw bytes "
                         f"or {2 * KEY_BYTES} hex digits")


def write_key_file(path: Path) -> bytes:
    """Create a new random key file (hex, mode 0600); refuse to overwrite one."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileInvalid(f"refusing to overwrite existing key file {path}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key
