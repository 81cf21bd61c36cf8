"""The node's HTTP API: aiohttp served inside the node's trio loop through trio-asyncio.

/health, /ready, /status and /metrics now; later areas add their routes with `add_routes`.
Every error, including unknown paths and wrong methods, is a JSON body with the status code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
import trio_asyncio
from aiohttp import web

from node.config import ApiSection, split_host_port
from node.metrics import NodeMetrics
from node.p2p import probe_tcp_listen

log = logging.getLogger("dcloud.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiStartError(Exception):
    """The HTTP API could not listen (for example, the port is in use)."""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


class NodeView:
    """What the API needs from the node; the node implements it."""

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def readiness(self) -> Readiness:
        raise NotImplementedError


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "status": status, **extra}, status=status)


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


class HttpApi:
    def __init__(self, config: ApiSection, view: NodeView, metrics: NodeMetrics) -> None:
        self.config = config
        self.view = view
        self.metrics = metrics
        self.app = web.Application(
            client_max_size=config.max_body_bytes,
            middlewares=[self._errors_middleware],
        )
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/ready", self._ready)
        self.app.router.add_get("/status", self._status)
        self.app.router.add_get("/metrics", self._metrics)
        self.bound: tuple[str, int] | None = None

    def add_routes(self, routes: list[web.RouteDef]) -> None:
        self.app.router.add_routes(routes)

    @web.middleware
    async def _errors_middleware(self, request: web.Request,
                                 handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # aiohttp's own 404/405/413 become JSON like every other error.
            if exc.status < 400:
                raise
            message = {404: f"no such path: {request.path}",
                       405: f"method {request.method} not allowed on {request.path}",
                       413: f"request body larger than {self.config.max_body_bytes} bytes"}.get(
                exc.status, exc.reason)
            response = json_error(exc.status, message)
        except Exception as exc:
            log.exception("HTTP handler for %s %s failed", request.method, request.path)
            response = json_error(500, f"internal error: {exc.__class__.__name__}")
        self.metrics.http_requests.labels(_route_label(request), str(response.status)).inc()
        return response

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        r = self.view.readiness()
        return web.json_response({"ready": r.ready, "reason": r.reason},
                                 status=200 if r.ready else 503)

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.view.status(), indent=2),
                            content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def check_port_free(self) -> None:
        """Raise ApiStartError now, before any service starts, if the API cannot listen."""
        host, port = split_host_port(self.config.listen)
        try:
            probe_tcp_listen(host, port)
        except OSError as exc:
            raise ApiStartError(
                f"cannot listen on {host}:{port} for the HTTP API: {exc.strerror or exc}"
            ) from exc

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        host, port = split_host_port(self.config.listen)
        async with trio_asyncio.open_loop():
            runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            await trio_asyncio.aio_as_trio(runner.setup)()
            site = web.TCPSite(runner, host, port, reuse_address=True)
            try:
                await trio_asyncio.aio_as_trio(site.start)()
            except OSError as exc:
                await trio_asyncio.aio_as_trio(runner.cleanup)()
                raise ApiStartError(
                    f"cannot listen on {host}:{port} for the HTTP API: {exc.strerror or exc}"
                ) from exc
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.bound = sockets[0].getsockname()[:2] if sockets else (host, port)
            log.info("HTTP API listening", extra={"url": f"http://{host}:{self.bound[1]}"})
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await trio_asyncio.aio_as_trio(runner.cleanup)()
