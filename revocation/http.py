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
from pydantic import BaseModel, ConfigDict, Field

from ca_core import errors, online
from ca_core.serials import parse_serial_hex
from shomei.http import RT, authenticate, operator_id, read_body, read_model, run_in_background

from .feed import FeedService, parse_batch
from .online_client import CONTENT_TYPE as CMS_CONTENT_TYPE
from .online_window import OnlineWindow
from .service import WindowRequest, WindowService

log = logging.getLogger(__name__)

RequestId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
Kind = Literal["signing", "auth"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Target(_Strict):
    request_id: RequestId
    serial: str | None = None
    resident_code: str | None = None
    kinds: list[Kind] | None = Field(default=None, min_length=1, max_length=2)


class RevokeBody(_Target):
    reason: Literal["holder_request", "key_compromise", "recording_error", "card_returned", "death"]
    invalidity_date: str | None = None


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


WINDOW = web.AppKey("revocation_window", WindowService)
FEED = web.AppKey("revocation_feed", FeedService)
ONLINE = web.AppKey("revocation_online", OnlineWindow)


async def _window(request: web.Request, action: str, model, default_kinds) -> web.Response:
    rt = request.app[RT]
    client = await authenticate(request, rt.clients, "terminal")
    operator = operator_id(request)
    body = await read_model(request, model, rt.cfg.server.max_body_bytes)
    result = await request.app[WINDOW].handle(client, operator, _window_request(action, body, default_kinds))
    return web.json_response(result.body, status=201 if result.created else 200)


async def post_revocations(request: web.Request) -> web.Response:
    return await _window(request, "revoke", RevokeBody, ())


async def post_holds(request: web.Request) -> web.Response:
    return await _window(request, "hold", HoldBody, ("signing", "auth"))


async def post_hold_release(request: web.Request) -> web.Response:
    return await _window(request, "release", HoldBody, ("auth",))


async def post_residency_events(request: web.Request) -> web.Response:
    rt = request.app[RT]
    client = await authenticate(request, rt.clients, "feed")
    cfg = rt.cfg.revocation
    body = await read_body(request, cfg.feed_max_body_bytes, ("application/json", "application/x-ndjson"))
    events = parse_batch(body, request.content_type, cfg.feed_max_events)
    answer = await request.app[FEED].apply(client, events)
    return web.json_response(answer)


async def _online(request: web.Request, procedure: str, status: int) -> web.Response:
    rt = request.app[RT]
    window = request.app[ONLINE]
    window.try_enter(procedure)
    try:
        try:
            body = await read_body(request, rt.cfg.revocation.online_max_body_bytes, (CMS_CONTENT_TYPE,))
        except (errors.UnsupportedMediaType, errors.PayloadTooLarge) as exc:
            en, ja = online.messages(exc.code, procedure)
            raise type(exc)(en, field=exc.field, message_ja=ja) from None
        answer = await window.handle(procedure, body)
    finally:
        window.leave()
    return web.json_response(answer, status=status)


async def post_online_revocations(request: web.Request) -> web.Response:
    return await _online(request, "revocation", 202)


async def post_online_validity_checks(request: web.Request) -> web.Response:
    return await _online(request, "validity_check", 200)


async def _purge_nonces(rt) -> None:
    """Background: forget nonces older than revocation.nonce_retention_days (they are stale anyway)."""
    from storage import online_nonces

    while True:
        try:
            before = rt.clock.now() - dt.timedelta(days=rt.cfg.revocation.nonce_retention_days)
            async with rt.pool.acquire() as conn:
                await online_nonces.purge(conn, before)
        except Exception as exc:  # a failed purge is retried next hour
            log.warning("nonce purge failed: %s", type(exc).__name__)
        await asyncio.sleep(3600)


def setup(app: web.Application, rt) -> None:
    app[WINDOW] = WindowService(rt)
    app[FEED] = FeedService(rt)
    app[ONLINE] = OnlineWindow(rt)
    app.router.add_post("/v1/revocations", post_revocations)
    app.router.add_post("/v1/holds", post_holds)
    app.router.add_post("/v1/holds/release", post_hold_release)
    app.router.add_post("/v1/residency-events", post_residency_events)
    app.router.add_post("/v1/online/revocations", post_online_revocations)
    app.router.add_post("/v1/online/validity-checks", post_online_validity_checks)
    run_in_background(app, "nonce-purge", lambda: _purge_nonces(rt))
