"""`dcloud-node object ...` without a node: parsing, progress, key files and local errors.

Transfers against a running node are covered by the integration tests.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import pytest

from node.cli import (
    MIB,
    TransferProgress,
    build_parser,
    format_object_status,
    format_object_table,
    format_progress,
    format_put_summary,
    format_size,
    main,
    object_path,
)
from node.storage.sealing import KEY_BYTES, read_key_file


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dcloud-node: error: ")
    return lines[0]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket that stands where a node would, to tell whether anyone connected."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.settimeout(0.2)
    yield sock
    sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


# ---- progress ----------------------------------------------------------------------------------


def test_progress_shows_percent_mib_rate_and_eta():
    line = format_progress(5 * MIB, 20 * MIB, 2.0)
    assert " 25.0%" in line
    assert "5.0/20.0 MiB" in line
    assert "2.5 MiB/s" in line
    assert "ETA 0:06" in line  # 15 MiB left at 2.5 MiB/s


def test_progress_eta_over_an_hour_has_hours():
    assert "ETA 1:00:00" in format_progress(MIB, 3601 * MIB, 1.0)


def test_progress_at_the_end():
    line = format_progress(8 * MIB, 8 * MIB, 4.0)
    assert "100.0%" in line and "ETA 0:00" in line and "#" * 24 in line


def test_progress_with_no_elapsed_time_has_no_rate_or_eta():
    line = format_progress(0, 10 * MIB, 0.0)
    assert "0.0%" in line and "-- MiB/s" in line and "ETA --:--" in line


def test_progress_of_an_empty_transfer_is_complete():
    assert "100.0%" in format_progress(0, 0, 0.0)


def test_progress_without_a_known_total_shows_bytes_and_rate():
    assert format_progress(3 * MIB, None, 1.0) == "3.0 MiB  3.0 MiB/s"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_redraws_in_place_at_most_every_interval():
    clock, out = FakeClock(), io.StringIO()
    bar = TransferProgress(out, 10 * MIB, clock=clock, interval_s=0.25)
    for _ in range(5):  # all within one interval: drawn once
        bar.advance(MIB)
    assert out.getvalue().count("\r") == 1
    clock.now += 0.25
    bar.advance(MIB)
    assert out.getvalue().count("\r") == 2
    assert "6.0/10.0 MiB" in out.getvalue()
    bar.close()
    bar.close()
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1
    assert "\n" not in out.getvalue()[:-1]


def test_a_shorter_redraw_erases_the_longer_line_before_it():
    clock, out = FakeClock(), io.StringIO()
    bar = TransferProgress(out, None, clock=clock, interval_s=0.0)
    clock.now += 1.0
    bar.advance(100 * MIB)
    clock.now += 100.0
    bar.advance(0)
    first, second = out.getvalue().split("\r")[1:]
    assert len(second) == len(first) and second.endswith(" ")


# ---- formatting --------------------------------------------------------------------------------


def test_sizes_for_people():
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(12 * MIB) == "12.0 MiB"
    assert format_size(3 * 2**40) == "3.0 TiB"


def test_object_names_are_one_percent_encoded_path_segment():
    assert object_path("photos/a b.jpg") == "/objects/photos%2Fa%20b.jpg"
    assert object_path("x", "/status") == "/objects/x/status"
    assert object_path("x", query={"k": 4, "m": 2}) == "/objects/x?k=4&m=2"
    assert object_path("x", query={}) == "/objects/x"


def test_put_summary_names_size_manifest_and_coding():
    doc = {"name": "a.bin", "manifest_id": "ab" * 32, "size": 3 * MIB, "segments": 1, "k": 4,
           "m": 2, "encrypted": True, "created_ms": 0, "creator": "n"}
    text = format_put_summary(doc)
    assert "a.bin" in text and "3.0 MiB" in text and "ab" * 32 in text
    assert "k+m=4+2" in text and "encrypted" in text and "1 segment," in text


def test_object_table_has_a_row_per_object():
    rows = [{"name": "photos/a.jpg", "size": 2048, "manifest_id": "0123456789abcdef" * 4,
             "created_ms": 0, "creator": "n", "encrypted": False},
            {"name": "b", "size": 1, "manifest_id": "f" * 64, "created_ms": 1_700_000_000_000,
             "creator": "n", "encrypted": True}]
    header, first, second = format_object_table(rows).splitlines()
    assert header.split() == ["NAME", "SIZE", "CREATED", "MANIFEST", "ENCRYPTED"]
    assert first.split() == ["photos/a.jpg", "2.0", "KiB", "1970-01-01", "00:00:00Z",
                             "0123456789abcdef", "no"]
    assert second.split()[-2:] == ["f" * 16, "yes"]
    assert format_object_table([]) == "no objects"


def test_object_status_lists_only_unhealthy_shards_and_unreadable_segments():
    def shard(index: int, healthy: bool, *holders: tuple[str, str, bool]) -> dict[str, object]:
        return {"index": index, "chunk_id": "c" * 64, "healthy": healthy,
                "holders": [{"node_id": n, "state": s, "has": h} for n, s, h in holders]}

    doc = {"name": "a", "manifest_id": "ab" * 32, "size": 10, "k": 2, "m": 1,
           "healthy_shards": 4, "total_shards": 6, "repairs_pending": 1, "segments": [
               {"index": 0, "shards": [shard(0, True, ("N1", "alive", True)),
                                       shard(1, True, ("N2", "alive", True)),
                                       shard(2, False, ("N3", "dead", False))]},
               {"index": 1, "shards": [shard(0, True, ("N1", "alive", True)),
                                       shard(1, True, ("N2", "alive", True)),
                                       shard(2, False)]}]}
    lines = format_object_status(doc).splitlines()
    assert lines[0].startswith("a: 4/6 shards healthy")
    assert "1 repairs pending" in lines[0]
    assert lines[2:] == ["  segment 0 shard 2: N3 (dead, no chunk)",
                         "  segment 1 shard 2: no holders"]
    doc["k"] = 3
    assert "  segment 0: 2 healthy shards, fewer than the k=3 needed to read it" in \
        format_object_status(doc).splitlines()


# ---- argument parsing --------------------------------------------------------------------------


def parse(*argv: str):
    return build_parser().parse_args(["object", *argv])


def test_parse_put():
    args = parse("put", "f.bin", "--name", "a/b", "--k", "4", "--m", "2", "--encrypt-key", "k",
                 "--url", "http://h:1", "--json", "--progress")
    assert (args.object_command, args.file, args.name, args.k, args.m, args.encrypt_key,
            args.url, args.json, args.progress) == ("put", "f.bin", "a/b", 4, 2, "k",
                                                    "http://h:1", True, True)
    args = parse("put", "f.bin", "--home", "/h")
    assert (args.name, args.k, args.m, args.encrypt_key, args.home, args.url, args.json,
            args.progress) == (None, None, None, None, "/h", None, False, False)


def test_parse_get():
    args = parse("get", "a", "-o", "out", "--decrypt-key", "k", "--home", "/h", "--progress")
    assert (args.object_command, args.name, args.output, args.decrypt_key, args.home,
            args.progress) == ("get", "a", "out", "k", "/h", True)
    args = parse("get", "a", "--output", "out", "--url", "http://h:1")
    assert (args.output, args.decrypt_key, args.url, args.progress) == \
        ("out", None, "http://h:1", False)


def test_parse_ls_rm_status_keygen():
    args = parse("ls", "--json", "--url", "http://h:1")
    assert (args.object_command, args.json, args.url) == ("ls", True, "http://h:1")
    args = parse("rm", "a", "--home", "/h")
    assert (args.object_command, args.name, args.home, args.json) == ("rm", "a", "/h", False)
    args = parse("status", "a", "--json")
    assert (args.object_command, args.name, args.json) == ("status", "a", True)
    args = parse("keygen", "my.key")
    assert (args.object_command, args.keyfile) == ("keygen", "my.key")


@pytest.mark.parametrize("argv", [
    ["object"],
    ["object", "put"],
    ["object", "put", "f", "--k", "four"],
    ["object", "get"],
    ["object", "ls", "extra"],
    ["object", "rm"],
    ["object", "status"],
    ["object", "keygen"],
    ["object", "get", "a", "--json"],
])
def test_bad_object_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2


# ---- keygen ------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_file_that_reads_back(tmp_path, capsys):
    path = tmp_path / "object.key"
    assert main(["object", "keygen", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {path}"
    assert len(read_key_file(path)) == KEY_BYTES
    assert path.stat().st_mode & 0o777 == 0o600


def test_keygen_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "object.key"
    assert main(["object", "keygen", str(path)]) == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["object", "keygen", str(path)]) == 2
    assert "refusing to overwrite" in one_error_line(capsys)
    assert path.read_bytes() == before


def test_keygen_into_a_missing_directory(tmp_path, capsys):
    assert main(["object", "keygen", str(tmp_path / "no" / "such.key")]) == 2
    assert "cannot create key file" in one_error_line(capsys)


# ---- local errors are reported before any node is contacted -----------------------------------


def test_put_of_a_missing_file(tmp_path, capsys, listener):
    missing = tmp_path / "missing.bin"
    assert main(["object", "put", str(missing), "--url", url_of(listener)]) == 2
    line = one_error_line(capsys)
    assert str(missing) in line and "does not exist" in line
    assert not connected(listener)


def test_put_of_a_directory(tmp_path, capsys, listener):
    assert main(["object", "put", str(tmp_path), "--url", url_of(listener)]) == 2
    assert str(tmp_path) in one_error_line(capsys)
    assert not connected(listener)


def test_put_with_a_bad_key_file(tmp_path, capsys, listener):
    data, key = tmp_path / "data.bin", tmp_path / "bad.key"
    data.write_bytes(b"hello")
    key.write_text("not a key\n")
    assert main(["object", "put", str(data), "--encrypt-key", str(key),
                 "--url", url_of(listener)]) == 2
    assert "32 raw bytes or 64 hex digits" in one_error_line(capsys)
    assert not connected(listener)


def test_get_with_a_missing_key_file(tmp_path, capsys, listener):
    out = tmp_path / "out.bin"
    assert main(["object", "get", "a", "-o", str(out), "--decrypt-key",
                 str(tmp_path / "none.key"), "--url", url_of(listener)]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert not connected(listener)
    assert list(tmp_path.iterdir()) == []


# ---- no node at the URL ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["ls"], ["rm", "a"], ["status", "a"], ["get", "a"], ["put", "{file}"],
])
def test_no_node_at_the_url(argv, tmp_path, capsys, clean_env):
    data = tmp_path / "data.bin"
    data.write_bytes(b"hello")
    argv = [a.replace("{file}", str(data)) for a in argv]
    assert main(["object", *argv, "--url", "http://127.0.0.1:1"]) == 2
    line = one_error_line(capsys)
    assert "cannot reach the node at http://127.0.0.1:1" in line


def test_get_to_a_file_leaves_nothing_when_the_node_is_unreachable(tmp_path, capsys):
    out = tmp_path / "out.bin"
    assert main(["object", "get", "a", "-o", str(out), "--url", "http://127.0.0.1:1"]) == 2
    one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
