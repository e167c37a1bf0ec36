"""Client authentication: bearer credentials of terminals, the feed and OCSP verifiers, and the
clerk's operator id. Which kinds may call what is decided by each handler (least privilege)."""
from __future__ import annotations

import re
import time

from aiohttp import web

from ca_core import errors
from storage import clients as client_store
from storage.clients import Client


class ClientCache:
    """Bearer credential -> client, cached briefly to spare a query per request."""

    def __init__(self, pool, ttl: float = 30.0):
        self._pool = pool
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}

    def clear(self) -> None:
        """Forget every credential (one was disabled or rotated: told through the status channel)."""
        self._cache.clear()

    async def lookup(self, token: str) -> Client | None:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit and hit[0] > now:
            return hit[1]
        async with self._pool.acquire() as conn:
            client = await client_store.find_by_token(conn, token)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (now + self._ttl, client)
        return client


def bearer_token(request: web.Request) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: web.Request, cache: ClientCache, *kinds: str) -> Client:
    """The calling client, which must be of one of ``kinds``: 401 unknown, 403 wrong kind."""
    token = bearer_token(request)
    if token is None:
        raise errors.Unauthenticated("missing bearer credential (Authorization: Bearer <credential>)")
    client = await cache.lookup(token)
    if client is None:
        raise errors.Unauthenticated("unknown or disabled credential")
    if client.kind not in kinds:
        raise errors.Forbidden(f"a {client.kind} credential may not call this endpoint")
    return client


_OPERATOR = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def operator_id(request: web.Request) -> str:
    """The clerk's operator id (X-Operator-Id), required on every terminal request."""
    value = request.headers.get("X-Operator-Id")
    if value is None:
        raise errors.InvalidRequest("missing X-Operator-Id header", field="X-Operator-Id",
                                    code="missing_operator_id")
    if not _OPERATOR.match(value):
        raise errors.InvalidRequest("X-Operator-Id must be 1-64 characters of A-Z a-z 0-9 . _ @ -",
                                    field="X-Operator-Id", code="invalid_operator_id")
    return value
