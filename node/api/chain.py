"""Chain routes: submit and look up transactions, read blocks and accounts.

POST /txs               signed tx as canonical CBOR (Content-Type: application/cbor) or JSON;
                        ?wait=commit waits until the tx is in a committed block
POST /txs/batch         up to MAX_BATCH_TXS signed txs in one request: a CBOR array of tx byte
                        strings; each is checked and admitted on its own, in order, and the
                        answer lists one result per tx (a client with many txs saves the
                        per-request cost, which dominates at hundreds of tx/s)
GET  /txs/{hash}        result of a committed tx (or "pending" while in the mempool)
GET  /blocks/{height}   a block (or /blocks/latest) with its commit
GET  /accounts/{addr}   balance and nonce of an account (20-byte address in hex)
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from node.api.http import json_error
from node.codec import DecodeError, from_cbor
from node.consensus.types import Block, Commit
from node.ledger.tx import Transfer

HEX_HASH = re.compile(r"^[0-9a-f]{64}$")
HEX_ADDRESS = re.compile(r"^[0-9a-f]{40}$")
WAIT_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
MAX_BATCH_TXS = 1000


class ChainApi:
    def __init__(self, consensus: Any) -> None:
        self.consensus = consensus

    @property
    def app(self) -> Any:
        return self.consensus.app

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/txs", self.post_tx),
            web.post("/txs/batch", self.post_batch),
            web.get("/txs/{hash}", self.get_tx),
            web.get("/blocks/{height}", self.get_block),
            web.get("/accounts/{address}", self.get_account),
        ]

    async def post_tx(self, request: web.Request) -> web.Response:
        body = await request.read()
        doc: dict[str, Any] | None
        max_tx = self.consensus.params.max_tx_bytes
        if len(body) > max_tx * 4 + 1024:
            return json_error(413, f"transaction larger than {max_tx} bytes", code="too_large")
        try:
            if request.content_type == "application/cbor":
                tx_bytes = body
            else:
                try:
                    doc = json.loads(body)
                except ValueError as exc:
                    raise DecodeError(f"body is not JSON: {exc}") from exc
                tx_bytes = Transfer.from_json(doc).encode()
        except DecodeError as exc:
            return json_error(400, str(exc), code="bad_encoding")
        result = self.consensus.submit_tx(tx_bytes)
        if not result.ok:
            status = 409 if result.code == "duplicate" else 400
            return json_error(status, result.reason, code=result.code, hash=result.tx_hash)
        doc = {"hash": result.tx_hash, "status": "pending"}
        if request.query.get("wait") == "commit":
            doc = await self._wait_committed(result.tx_hash)
            if doc is None:
                return json_error(504, f"not committed within {WAIT_TIMEOUT_S:.0f} s",
                                  hash=result.tx_hash, code="timeout")
        return web.json_response(doc, status=200 if "height" in doc else 202)

    async def post_batch(self, request: web.Request) -> web.Response:
        max_tx = self.consensus.params.max_tx_bytes
        limit = MAX_BATCH_TXS * (max_tx + 8) + 16
        if request.content_type != "application/cbor":
            return json_error(415, "a batch is a CBOR array of txs (application/cbor)",
                              code="bad_encoding")
        if request.content_length is not None and request.content_length > limit:
            return json_error(413, f"batch larger than {limit} bytes", code="too_large")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            return json_error(413, f"batch larger than {limit} bytes", code="too_large")
        try:
            txs = from_cbor(body, max_bytes=limit, max_depth=2)
            if not isinstance(txs, list) or not 0 < len(txs) <= MAX_BATCH_TXS or \
                    not all(isinstance(tx, bytes) for tx in txs):
                raise DecodeError(f"a batch is an array of 1-{MAX_BATCH_TXS} byte strings")
        except DecodeError as exc:
            return json_error(400, str(exc), code="bad_encoding")
        results = []
        accepted = 0
        for tx in txs:
            result = self.consensus.submit_tx(tx)
            if result.ok:
                accepted += 1
                results.append({"hash": result.tx_hash, "status": "pending"})
            else:
                results.append({"hash": result.tx_hash, "status": "rejected",
                                "code": result.code, "reason": result.reason})
        return web.json_response({"accepted": accepted, "rejected": len(txs) - accepted,
                                  "results": results}, status=202 if accepted else 400)

    async def _wait_committed(self, tx_hash: str) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_TIMEOUT_S
        while loop.time() < deadline:
            found = self._tx_doc(tx_hash)
            if found is not None:
                return found
            await asyncio.sleep(POLL_INTERVAL_S)
        return None

    def _tx_doc(self, tx_hash: str) -> dict[str, Any] | None:
        result = self.app.tx_result(tx_hash)
        if result is None:
            return None
        height, index, ok, code, reason = result
        return {"hash": tx_hash, "status": "committed", "height": height, "index": index,
                "ok": ok, "code": code, "reason": reason}

    async def get_tx(self, request: web.Request) -> web.Response:
        tx_hash = request.match_info["hash"].lower()
        if not HEX_HASH.match(tx_hash):
            return json_error(400, "a tx hash is 64 hex characters")
        doc = self._tx_doc(tx_hash)
        if doc is not None:
            return web.json_response(doc)
        if self.consensus.mempool.contains(tx_hash):
            return web.json_response({"hash": tx_hash, "status": "pending"})
        return json_error(404, f"no transaction {tx_hash}")

    async def get_block(self, request: web.Request) -> web.Response:
        which = request.match_info["height"]
        tip = self.consensus.tip.height
        if which == "latest":
            height = tip
        else:
            try:
                height = int(which)
            except ValueError:
                return json_error(400, "height must be a positive integer or 'latest'")
        if height < 1:
            return json_error(404, "no block yet" if which == "latest" else "heights start at 1")
        stored = self.consensus.store.get(height)
        if stored is None:
            return json_error(404, f"no block at height {height} (latest is {tip})")
        return web.json_response(block_json(stored.block, stored.commit))

    async def get_account(self, request: web.Request) -> web.Response:
        address = request.match_info["address"].lower()
        if not HEX_ADDRESS.match(address):
            return json_error(400, "an address is 40 hex characters (20 bytes)")
        account = self.app.account(bytes.fromhex(address))
        balance, nonce = (account[0], account[1]) if account is not None else (0, 0)
        pending = self.consensus.mempool.pending_nonce(bytes.fromhex(address))
        return web.json_response({"address": address, "balance": balance, "nonce": nonce,
                                  "next_nonce": nonce if pending is None else pending,
                                  "exists": account is not None,
                                  "height": self.consensus.tip.height})


def block_json(block: Block, commit: Commit) -> dict[str, Any]:
    from node.ledger.tx import tx_hash

    h = block.header
    return {
        "id": block.id.hex(),
        "header": {
            "chain_id": h.chain_id, "height": h.height, "time_ms": h.time_ms,
            "prev_block_id": h.prev_block_id.hex() if h.prev_block_id else None,
            "txs_hash": h.txs_hash.hex(), "app_hash": h.app_hash.hex(),
            "validators_hash": h.validators_hash.hex(), "proposer": h.proposer.hex(),
            "evidence_hash": h.evidence_hash.hex(),
        },
        "txs": [tx_hash(tx) for tx in block.txs],
        "evidence": [{"validator": e.vote_a.validator.hex(), "height": e.vote_a.height,
                      "round": e.vote_a.round, "type": e.vote_a.type.name.lower()}
                     for e in block.evidence],
        "last_commit": None if block.last_commit is None else _commit_json(block.last_commit),
        "commit": _commit_json(commit),
    }


def _commit_json(commit: Commit) -> dict[str, Any]:
    return {"height": commit.height, "round": commit.round, "block_id": commit.block_id.hex(),
            "signatures": [{"validator": s.validator.hex(), "signature": s.signature.hex()}
                           for s in commit.signatures]}
