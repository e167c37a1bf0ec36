"""Who is calling. Terminals, the call centre and the feed are identified by the certificate they
presented on the private listener (its serial, put on the request by the shell's listener middleware
as CLIENT_SERIAL); OCSP verifiers by a bearer credential. A terminal's request also names its clerk,
who must be a registered, enabled operator of the client's municipality (national: of the call centre).
Which kinds may call what is decided by each handler (least privilege)."""
from __future__ import annotations

import re
import time

from aiohttp import web

from ca_core import errors
from storage import clients as client_store
from storage import operators as operator_store
from storage.clients import Client

CLIENT_SERIAL = web.RequestKey("client_serial", bytes)  # set by the listener middleware, never by a header


class ClientCache:
    """Clients by certificate serial or verifier credential, and operator registrations, kept briefly
    to spare a query per request. Cleared whenever any process changes a client or an operator (status
    channel); the time limit covers a lost channel."""

    MAX_ENTRIES = 10_000

    def __init__(self, pool, ttl: float = 30.0):
        self._pool = pool
        self._ttl = ttl
        self._cache: dict[tuple, tuple[float, object]] = {}

    def clear(self) -> None:
        self._cache.clear()

    async def _get(self, key: tuple, query):
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        async with self._pool.acquire() as conn:
            value = await query(conn)
        if len(self._cache) >= self.MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, value)
        return value

    async def lookup_certificate(self, serial: bytes) -> Client | None:
        return await self._get(("cert", serial), lambda conn: client_store.find_by_certificate(conn, serial))

    async def lookup(self, token: str) -> Client | None:
        """A verifier's bearer credential (kept by its hash: an unknown credential of any length sent by
        anyone costs the cache 32 bytes)."""
        return await self._get(("token", client_store.token_hash(token)),
                               lambda conn: client_store.find_by_token(conn, token))

    async def operator_enabled(self, scope: str, operator: str) -> bool:
        return await self._get(("operator", scope, operator),
                               lambda conn: operator_store.is_enabled(conn, scope, operator))


def bearer_token(request: web.Request) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: web.Request, cache: ClientCache, *kinds: str) -> Client:
    """The calling client, which must be of one of ``kinds``; 403 without a client certificate (behind a
    proxy that passed none: the TLS listener refuses those at the handshake), for a certificate that is
    unknown, retired or of a disabled client, or of another kind."""
    serial = request.get(CLIENT_SERIAL)
    if serial is None:
        raise errors.Forbidden("a client certificate of the operations CA is required",
                               code="client_certificate_required")
    client = await cache.lookup_certificate(serial)
    if client is None:
        raise errors.Forbidden("this client certificate is unknown, rotated away or of a disabled client",
                               code="client_not_authorised")
    if client.kind not in kinds:
        raise errors.Forbidden(f"a {client.kind} client may not call this endpoint", code="wrong_client_kind")
    return client


_OPERATOR = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def valid_operator_id(value: str) -> bool:
    return bool(_OPERATOR.match(value))


async def operator_id(request: web.Request, cache: ClientCache, client: Client) -> str:
    """The clerk's operator id (X-Operator-Id), required on every terminal request, registered and
    enabled in the client's scope (its municipality; the call centre's: national)."""
    value = request.headers.get("X-Operator-Id")
    if value is None:
        raise errors.InvalidRequest("missing X-Operator-Id header", field="X-Operator-Id",
                                    code="missing_operator_id")
    if not _OPERATOR.match(value):
        raise errors.InvalidRequest("X-Operator-Id must be 1-64 characters of A-Z a-z 0-9 . _ @ -",
                                    field="X-Operator-Id", code="invalid_operator_id")
    scope = client.municipality_code or operator_store.NATIONAL
    if not await cache.operator_enabled(scope, value):
        raise errors.Forbidden(f"operator {value!r} is not a registered, enabled operator of {scope}",
                               field="X-Operator-Id", code="unknown_operator")
    return value
