"""node.crypto: Ed25519 keys and the key files in a node's home."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from node.crypto import (
    MAX_KEY_FILE_BYTES,
    Ed25519Key,
    KeyFileError,
    address_of,
    read_key_file,
    verify,
    write_key_file,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def key_doc(key: Ed25519Key) -> dict[str, str]:
    return {
        "type": "ed25519",
        "private_key": base64.b64encode(key.seed).decode(),
        "public_key": base64.b64encode(key.public_key).decode(),
    }


# ---- Ed25519Key ---------------------------------------------------------------------------------


def test_signature_verifies_with_the_public_key():
    key = Ed25519Key.generate()
    signature = key.sign(b"hello")
    assert len(signature) == 64
    assert verify(key.public_key, b"hello", signature)


def test_signature_does_not_verify_for_another_message_key_or_tampered_signature():
    key, other = Ed25519Key.generate(), Ed25519Key.generate()
    signature = key.sign(b"hello")
    assert not verify(key.public_key, b"hellO", signature)
    assert not verify(other.public_key, b"hello", signature)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(key.public_key, b"hello", tampered)


def test_verify_returns_false_on_garbage_inputs():
    key = Ed25519Key.generate()
    assert not verify(b"short", b"m", key.sign(b"m"))
    assert not verify(key.public_key, b"m", b"short")


def test_same_seed_same_key_and_deterministic_signatures():
    seed = bytes(range(32))
    a, b = Ed25519Key(seed), Ed25519Key(seed)
    assert a.public_key == b.public_key and len(a.public_key) == 32
    assert a.sign(b"x") == b.sign(b"x")
    assert Ed25519Key.generate().seed != Ed25519Key.generate().seed


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_seed_must_be_32_bytes(length):
    with pytest.raises(ValueError):
        Ed25519Key(b"\x01" * length)


def test_address_is_first_20_bytes_of_sha256_of_public_key():
    key = Ed25519Key(bytes(32))
    expected = hashlib.sha256(key.public_key).digest()[:20].hex()
    assert key.address == address_of(key.public_key) == expected
    assert len(key.address) == 40


# ---- write_key_file -----------------------------------------------------------------------------


def test_written_key_file_reads_back_with_mode_0600(tmp_path):
    key = Ed25519Key.generate()
    path = tmp_path / "keys" / "node_key.json"
    write_key_file(path, key)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert read_key_file(path) == key
    doc = json.loads(path.read_text())
    assert doc == key_doc(key)


def test_write_refuses_to_overwrite_and_keeps_old_bytes(tmp_path):
    path = tmp_path / "key.json"
    write_key_file(path, Ed25519Key.generate())
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite") as excinfo:
        write_key_file(path, Ed25519Key.generate())
    assert str(path) in str(excinfo.value)
    assert path.read_bytes() == before


def test_write_refuses_to_overwrite_any_existing_file(tmp_path):
    path = tmp_path / "key.json"
    path.write_text("not a key")
    with pytest.raises(KeyFileError):
        write_key_file(path, Ed25519Key.generate())
    assert path.read_text() == "not a key"


# ---- read_key_file rejections -------------------------------------------------------------------


def assert_rejected(path: Path, *fragments: str) -> KeyFileError:
    with pytest.raises(KeyFileError) as excinfo:
        read_key_file(path)
    message = str(excinfo.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return excinfo.value


def test_missing_file(tmp_path):
    assert_rejected(tmp_path / "absent.json", "does not exist")


def test_unreadable_path_directory(tmp_path):
    path = tmp_path / "key.json"
    path.mkdir()
    assert_rejected(path, "cannot read")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'"a string"',
        b"null",
    ],
    ids=["syntax", "empty", "binary", "list", "string", "null"],
)
def test_malformed_json(tmp_path, body):
    path = tmp_path / "key.json"
    path.write_bytes(body)
    assert_rejected(path, "malformed")


def write_doc(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(doc))
    return path


def test_wrong_key_type(tmp_path):
    doc = key_doc(Ed25519Key.generate()) | {"type": "secp256k1"}
    assert_rejected(write_doc(tmp_path, doc), "malformed", "ed25519")


def test_missing_type(tmp_path):
    doc = key_doc(Ed25519Key.generate())
    del doc["type"]
    assert_rejected(write_doc(tmp_path, doc), "malformed")


def test_missing_private_key(tmp_path):
    doc = key_doc(Ed25519Key.generate())
    del doc["private_key"]
    assert_rejected(write_doc(tmp_path, doc), "malformed")


@pytest.mark.parametrize("bad", ["!!!not-base64!!!", "AAAA====", 12345, None])
def test_bad_private_key_encoding(tmp_path, bad):
    doc = key_doc(Ed25519Key.generate()) | {"private_key": bad}
    assert_rejected(write_doc(tmp_path, doc), "malformed")


def test_private_key_of_wrong_length(tmp_path):
    doc = key_doc(Ed25519Key.generate()) | {"private_key": base64.b64encode(b"x" * 16).decode()}
    assert_rejected(write_doc(tmp_path, doc), "malformed")


def test_public_key_not_matching_private_key(tmp_path):
    key, other = Ed25519Key.generate(), Ed25519Key.generate()
    doc = key_doc(key) | {"public_key": base64.b64encode(other.public_key).decode()}
    assert_rejected(write_doc(tmp_path, doc), "does not match")


def test_public_key_that_is_not_base64(tmp_path):
    doc = key_doc(Ed25519Key.generate()) | {"public_key": "%%%"}
    assert_rejected(write_doc(tmp_path, doc), "malformed")


def test_public_key_is_optional(tmp_path):
    key = Ed25519Key.generate()
    doc = key_doc(key)
    del doc["public_key"]
    assert read_key_file(write_doc(tmp_path, doc)) == key


def test_oversized_file_is_rejected_even_if_valid_json(tmp_path):
    key = Ed25519Key.generate()
    body = json.dumps(key_doc(key)).encode()
    path = tmp_path / "key.json"
    path.write_bytes(body + b" " * (MAX_KEY_FILE_BYTES + 1 - len(body)))
    assert path.stat().st_size == 4097
    assert_rejected(path, "larger than 4096 bytes")


def test_file_of_exactly_the_limit_is_accepted(tmp_path):
    key = Ed25519Key.generate()
    body = json.dumps(key_doc(key)).encode()
    path = tmp_path / "key.json"
    path.write_bytes(body + b" " * (MAX_KEY_FILE_BYTES - len(body)))
    assert path.stat().st_size == 4096
    assert read_key_file(path) == key


def test_deeply_nested_json_is_malformed_not_a_crash(tmp_path):
    path = tmp_path / "key.json"
    path.write_bytes(b"[" * 4000)
    assert_rejected(path, "malformed")
