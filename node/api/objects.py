"""Object routes: streamed put and get of erasure-coded objects.

PUT    /objects/{name}[?k=K&m=M]   body streamed in; header X-Dcloud-Key: 64 hex (encrypt)
GET    /objects/{name}             streamed out; Range: bytes=a-b (206); X-Dcloud-Key to decrypt
HEAD   /objects/{name}             Content-Length, ETag (the manifest id), X-Dcloud-Encrypted
DELETE /objects/{name}             tombstone (only through the node that put it)
GET    /objects                    the names this node knows
GET    /objects/{name}/status      every shard's holders and whether they hold it

Handlers run in aiohttp's asyncio loop; the object service runs in trio. Bodies cross one
block at a time (trio_asyncio in both directions), so no request holds an object in memory.
Names may contain '/', so the routes match the rest of the path.
"""

from __future__ import annotations

import re
from typing import Any

import trio_asyncio
from aiohttp import web

from node.api.http import json_error
from node.storage.objects import BadRequest, ObjectError, ObjectService, StoredObject

READ_BLOCK_BYTES = 1024 * 1024
KEY_HEADER = "X-Dcloud-Key"
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _error(exc: ObjectError) -> web.Response:
    extra: dict[str, Any] = {"code": exc.code}
    for attr in ("needed", "available"):
        if hasattr(exc, attr):
            extra[attr] = getattr(exc, attr)
    return json_error(exc.status, str(exc), **extra)


def _key(request: web.Request) -> bytes | None:
    text = request.headers.get(KEY_HEADER)
    if text is None:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BadRequest(f"{KEY_HEADER} must be 64 hex digits (a 32-byte key)")
    return key


def _coding(request: web.Request) -> tuple[int | None, int | None]:
    out: list[int | None] = []
    for name in ("k", "m"):
        text = request.query.get(name)
        if text is None:
            out.append(None)
        elif text.isdigit() and 1 <= int(text) <= 32:
            out.append(int(text))
        else:
            raise BadRequest(f"{name} must be an integer from 1 to 32")
    return out[0], out[1]


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) of a single `bytes=` range, None for the whole object."""
    if header is None:
        return None
    match = RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _describe(obj: StoredObject) -> dict[str, Any]:
    r = obj.record
    return {"name": r.name, "manifest_id": r.manifest_id, "size": r.size,
            "segments": len(obj.manifest.segments), "k": obj.manifest.coding.k,
            "m": obj.manifest.coding.m, "encrypted": obj.encrypted,
            "created_ms": r.created_ms, "creator": r.creator}


class ObjectsApi:
    def __init__(self, objects: ObjectService, max_object_bytes: int) -> None:
        self.objects = objects
        self.max_object_bytes = max_object_bytes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/objects", self.list),
            web.get(r"/objects/{name:.+}/status", self.status),
            web.put(r"/objects/{name:.+}", self.put),
            web.get(r"/objects/{name:.+}", self.get),  # also answers HEAD
            web.delete(r"/objects/{name:.+}", self.delete),
        ]

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio_asyncio.trio_as_aio(fn)(*args, **kwargs)

    async def put(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            k, m = _coding(request)
            key = _key(request)
            if request.content_length is not None and \
                    request.content_length > self.max_object_bytes:
                return json_error(413, f"object of {request.content_length} bytes is over the "
                                       f"limit of {self.max_object_bytes}", code="too_large")
            read = trio_asyncio.aio_as_trio(request.content.read)

            async def read_block() -> bytes:
                return bytes(await read(READ_BLOCK_BYTES))

            record = await self._call(self.objects.put, name, read_block, k=k, m=m, key=key)
            obj = await self._call(self.objects.open, record.name)
        except ObjectError as exc:
            return _error(exc)
        return web.json_response(_describe(obj), status=201)

    async def _open(self, request: web.Request) -> StoredObject:
        return await self._call(self.objects.open, request.match_info["name"])  # type: ignore[no-any-return]

    async def get(self, request: web.Request) -> web.StreamResponse:
        try:
            obj = await self._open(request)
            key = _key(request)
        except ObjectError as exc:
            return _error(exc)
        size = obj.manifest.size
        wanted = _range(request.headers.get("Range"), size)
        start, end = wanted if wanted is not None else (0, size)
        headers = {"Content-Length": str(end - start), "Accept-Ranges": "bytes",
                   "ETag": f'"{obj.record.manifest_id}"',
                   "X-Dcloud-Encrypted": "true" if obj.encrypted else "false",
                   "Content-Type": "application/octet-stream"}
        if wanted is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if request.method == "HEAD":
            return web.Response(status=206 if wanted else 200, headers=headers)
        if obj.encrypted and key is None:
            return json_error(403, f"object {obj.record.name!r} is encrypted: send its key in "
                                   f"{KEY_HEADER}", code="key_required")
        resp = web.StreamResponse(status=206 if wanted else 200, headers=headers)
        await resp.prepare(request)
        write = trio_asyncio.aio_as_trio(resp.write)
        try:
            await self._call(self.objects.read, obj, start, end, write, key=key)
        except ObjectError:
            # Headers are gone already: cut the body short so the client sees a short read
            # against Content-Length, never a silently truncated object.
            request.transport.close() if request.transport else None  # type: ignore[func-returns-value]
            return resp
        await resp.write_eof()
        return resp

    async def delete(self, request: web.Request) -> web.Response:
        try:
            tomb = await self._call(self.objects.delete, request.match_info["name"])
        except ObjectError as exc:
            return _error(exc)
        return web.json_response({"name": tomb.name, "deleted": True})

    async def list(self, request: web.Request) -> web.Response:
        records = self.objects.names.live_records()
        return web.json_response({"objects": [
            {"name": r.name, "size": r.size, "manifest_id": r.manifest_id,
             "created_ms": r.created_ms, "creator": r.creator} for r in records]})

    async def status(self, request: web.Request) -> web.Response:
        try:
            obj = await self._open(request)
            doc = await self._call(self.objects.health, obj)
        except ObjectError as exc:
            return _error(exc)
        return web.json_response(doc)
