"""dcloud-node object: put, get, ls, rm, status and keygen, over a node's HTTP API, with a
progress bar on long transfers."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from node.cli_common import CliError, add_home, base_url

MIB = 2**20
TRANSFER_BLOCK_BYTES = MIB
# Without --progress, only transfers above this size on a terminal get a progress bar.
PROGRESS_AUTO_BYTES = 8 * MIB
PROGRESS_REDRAW_S = 0.1
PROGRESS_BAR_CHARS = 24
# A per-socket-operation limit, not a whole-transfer one: GiB objects take as long as they take,
# and after the last byte of a put the node still codes and places the final segment.
OBJECT_IO_TIMEOUT_S = 120.0
OBJECT_KEY_HEADER = "X-Dcloud-Key"
MAX_ERROR_BODY_BYTES = 65536
MAX_JSON_BODY_BYTES = 16 * MIB


def add_object_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("object", help="store, fetch and inspect objects (erasure-coded files)")
    o_sub = p.add_subparsers(dest="object_command", required=True, metavar="OBJECT_COMMAND")
    put = o_sub.add_parser("put", help="upload a file as an object")
    put.add_argument("file", metavar="FILE")
    put.add_argument("--name", help="object name (default: the file's base name)")
    put.add_argument("--k", type=int, help="data shards per segment (default: the node's)")
    put.add_argument("--m", type=int, help="parity shards per segment (default: the node's)")
    put.add_argument("--encrypt-key", metavar="KEYFILE",
                     help="seal the object with this key (see `object keygen`)")
    get = o_sub.add_parser("get", help="download an object to a file or stdout")
    get.add_argument("name", metavar="NAME")
    get.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    get.add_argument("--decrypt-key", metavar="KEYFILE", help="the key the object was put with")
    ls = o_sub.add_parser("ls", help="list the objects")
    rm = o_sub.add_parser("rm", help="delete an object")
    rm.add_argument("name", metavar="NAME")
    st = o_sub.add_parser("status", help="where an object's shards are and which are healthy")
    st.add_argument("name", metavar="NAME")
    for q in (put, get):
        q.add_argument("--progress", action="store_true",
                       help="draw a progress bar on stderr (default: only on a terminal, "
                       f"above {PROGRESS_AUTO_BYTES // MIB} MiB)")
    for q in (put, get, ls, rm, st):
        add_home(q)
        q.add_argument("--url", help="node API URL (default: the node running on --home)")
    for q in (put, ls, rm, st):
        q.add_argument("--json", action="store_true", help="print the raw JSON answer")
    kg = o_sub.add_parser("keygen", help="create a new encryption key file (mode 0600)")
    kg.add_argument("keyfile", metavar="KEYFILE")



def format_size(n: int) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 12.0 MiB, ..."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _format_duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(done: int, total: int | None, elapsed_s: float) -> str:
    """One progress line: bar, percent, MiB done/total, average rate and ETA.

    `total` is None when the node did not say how long the body is; a zero total is complete.
    """
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    speed = f"{rate / MIB:.1f} MiB/s" if elapsed_s > 0 else "-- MiB/s"
    if total is None:
        return f"{done / MIB:.1f} MiB  {speed}"
    fraction = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    filled = int(fraction * PROGRESS_BAR_CHARS)
    bar = "#" * filled + "-" * (PROGRESS_BAR_CHARS - filled)
    remaining = max(total - done, 0)
    if remaining == 0:
        eta = "0:00"
    elif rate > 0:
        eta = _format_duration(remaining / rate)
    else:
        eta = "--:--"
    return (f"[{bar}] {100 * fraction:5.1f}%  {done / MIB:.1f}/{total / MIB:.1f} MiB  "
            f"{speed}  ETA {eta}")


class TransferProgress:
    """A progress line on `stream`, redrawn in place at most once per `interval_s`."""

    def __init__(self, stream: TextIO, total: int | None, *,
                 clock: Callable[[], float] = time.monotonic,
                 interval_s: float = PROGRESS_REDRAW_S) -> None:
        self.total = total
        self.done = 0
        self._stream = stream
        self._clock = clock
        self._interval_s = interval_s
        self._start = clock()
        self._last_draw: float | None = None
        self._width = 0
        self._closed = False

    def advance(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if self._last_draw is None or now - self._last_draw >= self._interval_s:
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line, so what is printed next starts on its own."""
        if self._closed:
            return
        self._closed = True
        self._draw(self._clock())
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, now: float) -> None:
        line = format_progress(self.done, self.total, now - self._start)
        # Pad over the previous line: '\r' returns the cursor but does not erase.
        self._stream.write("\r" + line + " " * max(self._width - len(line), 0))
        self._stream.flush()
        self._width = len(line)
        self._last_draw = now


def _progress_for(args: argparse.Namespace, total: int | None) -> TransferProgress | None:
    if getattr(args, "json", False):
        return None
    if args.progress or (total is not None and total > PROGRESS_AUTO_BYTES
                         and sys.stderr.isatty()):
        return TransferProgress(sys.stderr, total)
    return None


def object_path(name: str, suffix: str = "", query: dict[str, int] | None = None) -> str:
    """The API path of object `name`; the name is one path segment even if it holds '/'."""
    path = "/objects/" + urllib.parse.quote(name, safe="") + suffix
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _node_error(status: int, body: bytes, url: str, name: str | None = None) -> CliError:
    """The one-line error for an HTTP error answer (JSON {"error", "status", "code"})."""
    if status == 404 and name is not None:
        return CliError(f"object {name!r} does not exist")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "error" not in doc:
        return CliError(f"{url} answered HTTP {status}")
    code = f", {doc['code']}" if doc.get("code") else ""
    return CliError(f"rejected (HTTP {status}{code}): {_one_line(doc['error'])}")


def _json_body(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise CliError(f"{url} did not answer JSON") from exc


def _unreachable(base: str, exc: BaseException) -> CliError:
    return CliError(f"cannot reach the node at {base}: {getattr(exc, 'reason', exc)}")


def _object_json(method: str, base: str, path: str, name: str | None = None) -> Any:
    """A bodyless request whose answer is small JSON (ls, rm, status)."""
    url = base + path
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=OBJECT_IO_TIMEOUT_S) as resp:  # noqa: S310
            body = resp.read(MAX_JSON_BODY_BYTES)
    except urllib.error.HTTPError as exc:
        raise _node_error(exc.code, exc.read(MAX_ERROR_BODY_BYTES), url, name) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(base, exc) from exc
    return _json_body(body, url)


def _connect(base: str) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the node at `base` and the path prefix its URL carries."""
    parts = urllib.parse.urlsplit(base)
    try:
        port = parts.port
    except ValueError as exc:
        raise CliError(f"node URL {base} has a bad port") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"node URL {base} must look like http://HOST:PORT")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, port, timeout=OBJECT_IO_TIMEOUT_S)
    try:
        conn.connect()
    except OSError as exc:
        raise _unreachable(base, exc) from exc
    return conn, parts.path.rstrip("/")


def _response(conn: http.client.HTTPConnection, base: str) -> http.client.HTTPResponse:
    try:
        return conn.getresponse()
    except TimeoutError as exc:
        raise CliError(f"the node at {base} did not answer within "
                       f"{OBJECT_IO_TIMEOUT_S:.0f} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise CliError(f"lost the connection to the node at {base}: {exc}") from exc


def _read_object_key(path: str) -> bytes:
    from node.storage.sealing import KeyFileInvalid
    from node.storage.sealing import read_key_file as read_object_key

    try:
        return read_object_key(Path(path))
    except KeyFileInvalid as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot read encryption key file {path}: {exc.strerror}") from exc


def _upload(base: str, path: str, headers: dict[str, str], source: BinaryIO, size: int,
            progress: TransferProgress | None) -> tuple[int, bytes]:
    """PUT `size` bytes of `source` in TRANSFER_BLOCK_BYTES blocks; the answer's status, body."""
    conn, prefix = _connect(base)
    try:
        sent = 0
        try:
            conn.putrequest("PUT", prefix + path, skip_accept_encoding=True)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            while sent < size:
                try:
                    block = source.read(min(TRANSFER_BLOCK_BYTES, size - sent))
                except OSError as exc:
                    raise CliError(f"cannot read the file after {sent} bytes: "
                                   f"{exc.strerror}") from exc
                if not block:
                    raise CliError(f"the file shrank to {sent} bytes while it was being sent")
                conn.send(block)
                sent += len(block)
                if progress is not None:
                    progress.advance(len(block))
        except OSError as exc:
            # A node refusing a put (bad k/m, no space, bad key) may answer and close before
            # reading the whole body; its answer says why, so use it if it arrived.
            try:
                resp = conn.getresponse()
                return resp.status, resp.read(MAX_ERROR_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                raise CliError(f"the node at {base} closed the connection after {sent} of "
                               f"{size} bytes: {exc}") from exc
        finally:
            if progress is not None:
                progress.close()
        resp = _response(conn, base)
        try:
            return resp.status, resp.read(MAX_JSON_BODY_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(f"lost the connection to the node at {base}: {exc}") from exc
    finally:
        conn.close()


def _download(resp: http.client.HTTPResponse, sink: BinaryIO, sink_name: str, base: str,
              progress: TransferProgress | None) -> int:
    """Copy the body to `sink` in TRANSFER_BLOCK_BYTES blocks; error if it is cut short."""
    total = resp.length  # None without a Content-Length (a chunked body ends explicitly)
    got = 0
    try:
        while True:
            try:
                block = resp.read(TRANSFER_BLOCK_BYTES)
            except TimeoutError as exc:
                raise CliError(f"the node at {base} stopped sending after {got} bytes") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise CliError(f"the download broke after {got} bytes: {exc}") from exc
            if not block:
                break
            sink.write(block)
            got += len(block)
            if progress is not None:
                progress.advance(len(block))
    finally:
        if progress is not None:
            progress.close()
    # http.client returns b"" at a premature close of a Content-Length body instead of raising.
    if total is not None and got != total:
        raise CliError(f"the node sent {got} of {total} bytes; {sink_name} is incomplete")
    return got


def cmd_object(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "put": cmd_object_put,
        "get": cmd_object_get,
        "ls": cmd_object_ls,
        "rm": cmd_object_rm,
        "status": cmd_object_status,
        "keygen": cmd_object_keygen,
    }
    return handlers[args.object_command](args)


def cmd_object_put(args: argparse.Namespace) -> int:
    path = Path(args.file)
    name = path.name if args.name is None else args.name
    if not name:
        raise CliError(f"cannot name an object after {args.file!r}: give --name")
    # Everything local is checked before the node is contacted.
    try:
        source = open(path, "rb")
    except FileNotFoundError as exc:
        raise CliError(f"{path} does not exist") from exc
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    with source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CliError(f"{path} is not a regular file")
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Length": str(info.st_size)}
        if args.encrypt_key:
            # The node seals the segments, so it needs the key; keep --url on a trusted link.
            headers[OBJECT_KEY_HEADER] = _read_object_key(args.encrypt_key).hex()
        query = {q: v for q, v in (("k", args.k), ("m", args.m)) if v is not None}
        base = base_url(args)
        req_path = object_path(name, query=query)
        status, body = _upload(base, req_path, headers, source, info.st_size,
                               _progress_for(args, info.st_size))
    if status not in (200, 201):
        raise _node_error(status, body, base + req_path)
    doc = _json_body(body, base + req_path)
    print(json.dumps(doc, indent=2) if args.json else format_put_summary(doc))
    return 0


def format_put_summary(doc: dict[str, Any]) -> str:
    sealed = ", encrypted" if doc.get("encrypted") else ""
    segments = doc.get("segments")
    return (f"stored {doc.get('name')}: {format_size(int(doc.get('size', 0)))}, "
            f"{segments} segment{'' if segments == 1 else 's'}, "
            f"k+m={doc.get('k')}+{doc.get('m')}{sealed}\n"
            f"manifest {doc.get('manifest_id')}")


def cmd_object_get(args: argparse.Namespace) -> int:
    headers = {}
    if args.decrypt_key:
        headers[OBJECT_KEY_HEADER] = _read_object_key(args.decrypt_key).hex()
    out = Path(args.output) if args.output else None
    if out is not None and out.is_dir():
        raise CliError(f"{out} is a directory: give a file name to -o")
    base = base_url(args)
    conn, prefix = _connect(base)
    try:
        try:
            conn.request("GET", prefix + object_path(args.name), headers=headers)
        except OSError as exc:
            raise _unreachable(base, exc) from exc
        resp = _response(conn, base)
        if resp.status != 200:
            raise _node_error(resp.status, resp.read(MAX_ERROR_BODY_BYTES),
                              base + object_path(args.name), args.name)
        progress = _progress_for(args, resp.length)
        if out is None:
            _download_to_stdout(resp, base, progress)
        else:
            _download_to_file(resp, out, base, progress)
    finally:
        conn.close()
    return 0


def _download_to_file(resp: http.client.HTTPResponse, out: Path, base: str,
                      progress: TransferProgress | None) -> None:
    # Written beside the target and renamed, so FILE is either the whole object or untouched.
    part = out.with_name(out.name + ".part")
    try:
        try:
            sink = open(part, "wb")
        except OSError as exc:
            raise CliError(f"cannot write {part}: {exc.strerror}") from exc
        with sink:
            try:
                _download(resp, sink, str(out), base, progress)
                sink.flush()
                os.fsync(sink.fileno())
            except OSError as exc:
                raise CliError(f"cannot write {part}: {exc.strerror}") from exc
        try:
            os.replace(part, out)
        except OSError as exc:
            raise CliError(f"cannot rename {part} to {out}: {exc.strerror}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _download_to_stdout(resp: http.client.HTTPResponse, base: str,
                        progress: TransferProgress | None) -> None:
    try:
        _download(resp, sys.stdout.buffer, "stdout", base, progress)
        sys.stdout.buffer.flush()
    except BrokenPipeError as exc:
        # The reader went away (`| head`): point stdout at /dev/null so the interpreter's
        # final flush does not print a traceback after our one-line error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise CliError("stdout was closed before the whole object was written") from exc
    except OSError as exc:
        raise CliError(f"cannot write to stdout: {exc.strerror}") from exc


def cmd_object_ls(args: argparse.Namespace) -> int:
    doc = _object_json("GET", base_url(args), "/objects")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_object_table(doc.get("objects", []) if isinstance(doc, dict) else []))
    return 0


def _format_time_ms(ms: object) -> str:
    if type(ms) is not int:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_object_table(objects: list[dict[str, Any]]) -> str:
    if not objects:
        return "no objects"
    width = max(4, *(len(str(o.get("name", ""))) for o in objects))
    lines = [f"{'NAME':<{width}}  {'SIZE':>10}  {'CREATED':<20}  {'MANIFEST':<16}  ENCRYPTED"]
    for o in objects:
        size = o.get("size")
        lines.append(f"{str(o.get('name', '')):<{width}}  "
                     f"{format_size(size) if type(size) is int else '-':>10}  "
                     f"{_format_time_ms(o.get('created_ms')):<20}  "
                     f"{str(o.get('manifest_id', ''))[:16]:<16}  "
                     f"{'yes' if o.get('encrypted') else 'no'}")
    return "\n".join(lines)


def cmd_object_rm(args: argparse.Namespace) -> int:
    doc = _object_json("DELETE", base_url(args), object_path(args.name), args.name)
    print(json.dumps(doc, indent=2) if args.json else f"deleted {args.name}")
    return 0


def cmd_object_status(args: argparse.Namespace) -> int:
    doc = _object_json("GET", base_url(args), object_path(args.name, "/status"), args.name)
    print(json.dumps(doc, indent=2) if args.json else format_object_status(doc))
    return 0


def format_object_status(doc: dict[str, Any]) -> str:
    """A summary line, then what is wrong: segments short of k, and every unhealthy shard."""
    k = doc.get("k")
    segments = doc.get("segments", [])
    pending = doc.get("repairs_pending", 0)
    lines = [f"{doc.get('name')}: {doc.get('healthy_shards')}/{doc.get('total_shards')} shards "
             f"healthy, k+m={k}+{doc.get('m')}, {len(segments)} segments, "
             f"{format_size(int(doc.get('size', 0)))}, {pending} repairs pending",
             f"manifest {doc.get('manifest_id')}"]
    for seg in segments:
        shards = seg.get("shards", [])
        healthy = sum(1 for sh in shards if sh.get("healthy"))
        if type(k) is int and healthy < k:
            lines.append(f"  segment {seg.get('index')}: {healthy} healthy shards, fewer than "
                         f"the k={k} needed to read it")
        for sh in shards:
            if sh.get("healthy"):
                continue
            holders = ", ".join(
                f"{h.get('node_id')} ({h.get('state')}, "
                f"{'has chunk' if h.get('has') else 'no chunk'})"
                for h in sh.get("holders", [])) or "no holders"
            lines.append(f"  segment {seg.get('index')} shard {sh.get('index')}: {holders}")
    return "\n".join(lines)


def cmd_object_keygen(args: argparse.Namespace) -> int:
    from node.storage.sealing import KeyFileInvalid
    from node.storage.sealing import write_key_file as write_object_key

    path = Path(args.keyfile)
    try:
        write_object_key(path)
    except KeyFileInvalid as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot create key file {path}: {exc.strerror}") from exc
    print(f"wrote {path}")
    return 0
