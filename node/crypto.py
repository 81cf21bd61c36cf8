"""Ed25519 keys (pynacl) and the key files kept in a node's home."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

KEY_TYPE = "ed25519"
MAX_KEY_FILE_BYTES = 4096


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed, or would be overwritten."""


@dataclass(frozen=True)
class Ed25519Key:
    """An ed25519 private key with its public half."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> Ed25519Key:
        return cls(bytes(SigningKey.generate()))

    @property
    def signing_key(self) -> SigningKey:
        return SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    @property
    def address(self) -> str:
        """Account/validator address: first 20 bytes of sha256(public key), hex."""
        return address_of(self.public_key)


def address_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).digest()[:20].hex()


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def write_key_file(path: Path, key: Ed25519Key) -> None:
    """Write `key` to `path` with mode 0600; never overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps(
        {
            "type": KEY_TYPE,
            "private_key": base64.b64encode(key.seed).decode(),
            "public_key": base64.b64encode(key.public_key).decode(),
        },
        indent=2,
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"refusing to overwrite existing key file {path}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


def read_key_file(path: Path) -> Ed25519Key:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeyFileError(f"key file {path} does not exist (run `dcloud-node init`)") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        doc = json.loads(raw)
        if doc.get("type") != KEY_TYPE:
            raise ValueError(f"type must be {KEY_TYPE!r}")
        seed = base64.b64decode(doc["private_key"], validate=True)
        key = Ed25519Key(seed)
        if "public_key" in doc and base64.b64decode(doc["public_key"]) != key.public_key:
            raise ValueError("public_key does not match private_key")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise KeyFileError(f"key file {path} is malformed: {exc}") from exc
    return key
