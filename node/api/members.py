"""Membership routes: GET /members (the SWIM view with heartbeats), GET /regions (leaders and
their latest signed summaries)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class MembersApi:
    def __init__(self, membership: Any) -> None:
        self.membership = membership

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/members", self.members), web.get("/regions", self.regions)]

    async def members(self, request: web.Request) -> web.Response:
        return web.json_response(self.membership.status())

    async def regions(self, request: web.Request) -> web.Response:
        return web.json_response(self.membership.regions())
