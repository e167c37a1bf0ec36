"""HTTP routes of the revocation lifecycle.

Terminal-authenticated window: POST /v1/revocations, /v1/holds, /v1/holds/release.
Feed-authenticated resident-register feed: POST /v1/residency-events.
Unauthenticated online window (the signature is the authentication): POST /v1/online/revocations and
/v1/online/validity-checks, DER CMS SignedData bodies.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ca_core import errors, online
from ca_core.clock import Clock
from ca_core.config import RevocationConfig
from ca_core.kinds import AUTH, KINDS, Kind
from ca_core.serials import parse_serial_hex
from plumbing.auth import ClientCache, authenticate, operator_id
from plumbing.http import private, read_body, read_model
from plumbing.tasks import run_in_background
from storage import online_nonces

from .feed import FeedService, parse_batch
from .online_client import CONTENT_TYPE as CMS_CONTENT_TYPE
from .online_window import OnlineWindow
from .service import WindowRequest, WindowService

log = logging.getLogger(__name__)

RequestId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _not_null(value):
    """An optional field is left out, never null (as the OpenAPI document says)."""
    if value is None:
        raise ValueError("null is not allowed; leave the field out")
    return value


class _Target(_Strict):
    request_id: RequestId
    serial: str | None = None
    resident_code: str | None = None
    kinds: list[Kind] | None = Field(default=None, min_length=1, max_length=2)

    _given = field_validator("serial", "resident_code", "kinds", mode="before")(_not_null)


class RevokeBody(_Target):
    reason: Literal["holder_request", "key_compromise", "recording_error", "card_returned", "death"]
    invalidity_date: str | None = None

    _given_date = field_validator("invalidity_date", mode="before")(_not_null)


class HoldBody(_Target):
    pass


def _serial(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_serial_hex(text)
    except ValueError:
        raise errors.InvalidRequest("serial must be 1 to 40 hex digits", field="serial", code="invalid_serial") from None


def _time(text: str | None, field: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise errors.InvalidRequest(f"{field} must be an RFC 3339 date-time", field=field,
                                    code="invalid_date") from None
    return value


def _window_request(action: str, body: _Target, default_kinds: tuple[str, ...]) -> WindowRequest:
    kinds = tuple(dict.fromkeys(body.kinds)) if body.kinds else (default_kinds if body.resident_code else ())
    return WindowRequest(
        action=action, request_id=body.request_id, serial=_serial(body.serial), resident_code=body.resident_code,
        kinds=kinds, reason=getattr(body, "reason", None),
        invalidity_date=_time(getattr(body, "invalidity_date", None), "invalidity_date"))


class RevocationEndpoints:
    """The HTTP face of the revocation lifecycle: the window (terminals), the feed, the online window."""

    def __init__(self, *, window: WindowService, feed: FeedService, online_window: OnlineWindow,
                 clients: ClientCache, max_body_bytes: int, settings: RevocationConfig):
        self.window = window
        self.feed = feed
        self.online_window = online_window
        self.clients = clients
        self.max_body_bytes = max_body_bytes
        self.settings = settings

    async def _window(self, request: web.Request, action: str, model, default_kinds) -> web.Response:
        # The call centre (national) may place holds anywhere, and nothing else (docs/domain.md).
        kinds = ("terminal", "national") if action == "hold" else ("terminal",)
        client = await authenticate(request, self.clients, *kinds)
        operator = await operator_id(request, self.clients, client)
        body = await read_model(request, model, self.max_body_bytes)
        result = await self.window.handle(client, operator, _window_request(action, body, default_kinds))
        return web.json_response(result.body, status=201 if result.created else 200)

    @private
    async def post_revocations(self, request: web.Request) -> web.Response:
        return await self._window(request, "revoke", RevokeBody, ())

    @private
    async def post_holds(self, request: web.Request) -> web.Response:
        return await self._window(request, "hold", HoldBody, KINDS)

    @private
    async def post_hold_release(self, request: web.Request) -> web.Response:
        return await self._window(request, "release", HoldBody, (AUTH,))

    @private
    async def post_residency_events(self, request: web.Request) -> web.Response:
        client = await authenticate(request, self.clients, "feed")
        cfg = self.settings
        body = await read_body(request, cfg.feed_max_body_bytes, ("application/json", "application/x-ndjson"))
        events = parse_batch(body, request.content_type, cfg.feed_max_events)
        return web.json_response(await self.feed.apply(client, events))

    async def _online(self, request: web.Request, procedure: str, status: int) -> web.Response:
        window = self.online_window
        # The body first: a slow sender holds no slot (and is cut off after plumbing.http.BODY_READ_SECONDS).
        body = await read_body(request, self.settings.online_max_body_bytes, (CMS_CONTENT_TYPE,),
                               messages=lambda code: online.messages(code, procedure))
        window.try_enter(procedure)
        try:
            answer = await window.handle(procedure, body)
        finally:
            window.leave()
        return web.json_response(answer, status=status)

    async def post_online_revocations(self, request: web.Request) -> web.Response:
        return await self._online(request, "revocation", 202)

    async def post_online_validity_checks(self, request: web.Request) -> web.Response:
        return await self._online(request, "validity_check", 200)


async def _purge_nonces(pool, clock: Clock, retention_days: int) -> None:
    """Background: forget nonces older than revocation.nonce_retention_days (they are stale anyway)."""
    while True:
        try:
            before = clock.now() - dt.timedelta(days=retention_days)
            async with pool.acquire() as conn:
                await online_nonces.purge(conn, before)
        except Exception as exc:  # a failed purge is retried next hour
            log.warning("nonce purge failed: %s", type(exc).__name__)
        await asyncio.sleep(3600)


ENDPOINTS = web.AppKey("revocation", RevocationEndpoints)


def setup(app: web.Application, rt) -> None:
    e = app[ENDPOINTS] = RevocationEndpoints(
        window=WindowService.from_runtime(rt), feed=FeedService.from_runtime(rt),
        online_window=OnlineWindow.from_runtime(rt), clients=rt.clients,
        max_body_bytes=rt.cfg.server.max_body_bytes, settings=rt.cfg.revocation)
    app.router.add_post("/v1/revocations", e.post_revocations)
    app.router.add_post("/v1/holds", e.post_holds)
    app.router.add_post("/v1/holds/release", e.post_hold_release)
    app.router.add_post("/v1/residency-events", e.post_residency_events)
    app.router.add_post("/v1/online/revocations", e.post_online_revocations)
    app.router.add_post("/v1/online/validity-checks", e.post_online_validity_checks)
    run_in_background(app, "nonce-purge",
                      lambda: _purge_nonces(rt.pool, rt.clock, rt.cfg.revocation.nonce_retention_days))
