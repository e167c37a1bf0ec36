"""OCSP over HTTP (RFC 6960 appendix A, RFC 5019 section 5): POST /ocsp and GET /ocsp/{base64}.

Every answer is an application/ocsp-response with HTTP 200, the OCSP error statuses included
(malformedRequest for undecodable input, a wrong Content-Type or an oversize body; unauthorized for an
issuer we do not serve and, in `verifier` access mode, for a missing or unknown credential; tryLater
under overload): an OCSP client reads the status from the body, and nothing is ever a 500.

A GET for an answer in process memory is a dict look-up and a write.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time

from aiohttp import web

from ca_core.ocsp import ResponseStatus
from ca_core.errors import RequestTimeout
from plumbing.auth import ClientCache, bearer_token
from plumbing.http import read_limited

from .service import ERROR_BODIES, Answer, Responder

log = logging.getLogger(__name__)

SERVICE = web.AppKey("ocsp_responder", Responder)
CLIENTS = web.AppKey("ocsp_clients", ClientCache)
DENIED = object()

_NO_STORE = {"Content-Type": "application/ocsp-response", "Cache-Control": "no-cache, no-store"}
_B64 = bytes.maketrans(b"-_", b"+/")


def _error_response(status: ResponseStatus) -> web.Response:
    headers = dict(_NO_STORE)
    if status == ResponseStatus.try_later:
        headers["Retry-After"] = "1"
    return web.Response(body=ERROR_BODIES[status], headers=headers)


async def _verifier(request: web.Request, svc: Responder):
    """In `verifier` mode, the registered verifier calling; DENIED without a valid verifier credential."""
    token = bearer_token(request)
    if token is None:
        return DENIED
    try:
        client = await request.app[CLIENTS].lookup(token)
    except Exception as exc:  # database down: cannot check the credential now
        log.warning("verifier look-up failed: %s", type(exc).__name__)
        return None
    if client is None or client.kind != "verifier":
        return DENIED
    return client


def _client(request: web.Request, verifier) -> object:
    """Whom the nonce limit counts: the registered verifier, else the address it came from."""
    return ("verifier", verifier.id) if verifier is not None else ("address", request.remote)


def answer_headers(answer: Answer, now: float) -> dict[str, str]:
    """The HTTP headers of an answer: RFC 5019 caching headers for a cacheable one, no-store otherwise
    (with Retry-After for tryLater)."""
    if answer.entry is not None:
        return answer.entry.headers(now)
    if answer.status == "try_later":
        return {**_NO_STORE, "Retry-After": "1"}
    return _NO_STORE


def _reply(request: web.Request, svc: Responder, answer: Answer, verifier, now: float) -> web.Response:
    svc.count(answer.status, answer.source, verifier, answer.successful)
    entry = answer.entry
    if entry is not None and request.headers.get("If-None-Match") == entry.etag:
        return web.Response(status=304, headers=entry.headers(now))
    return web.Response(body=answer.body, headers=answer_headers(answer, now))


async def _access(request: web.Request, svc: Responder):
    """(verifier or None, early response or None)."""
    if not svc.verifier_mode:
        return None, None
    verifier = await _verifier(request, svc)
    if verifier is DENIED:
        svc.count("unauthorized", "error", None, False)
        return None, _error_response(ResponseStatus.unauthorized)
    if verifier is None:
        svc.count("try_later", "error", None, False)
        return None, _error_response(ResponseStatus.try_later)
    return verifier, None


async def get_ocsp(request: web.Request) -> web.Response:
    """GET /ocsp/{url-encoded base64 of the DER OCSPRequest} (RFC 5019 section 5)."""
    svc = request.app[SERVICE]
    verifier, early = await _access(request, svc) if svc.verifier_mode else (None, None)
    if early is not None:
        return early
    key = request.match_info["req"]
    now = time.time()
    entry = svc.cache.get(key, now)
    if entry is not None:
        svc.count(entry.status, "memory", verifier)
        if request.headers.get("If-None-Match") == entry.etag:
            return web.Response(status=304, headers=entry.headers(now))
        return web.Response(body=entry.body, headers=entry.headers(now))
    if len(key) > svc.max_get_chars:
        return _reply(request, svc, svc.malformed, verifier, now)
    try:
        text = key.strip().encode("ascii").translate(_B64)
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return _reply(request, svc, svc.malformed, verifier, now)
    answer = await svc.answer(raw, key, _client(request, verifier))
    return _reply(request, svc, answer, verifier, time.time())


async def post_ocsp(request: web.Request) -> web.Response:
    """POST /ocsp with an application/ocsp-request body (RFC 6960 appendix A.1)."""
    svc = request.app[SERVICE]
    verifier, early = await _access(request, svc) if svc.verifier_mode else (None, None)
    if early is not None:
        return early
    now = time.time()
    limit = svc.cfg.max_request_bytes
    if request.content_type != "application/ocsp-request":
        return _reply(request, svc, svc.malformed, verifier, now)
    try:
        body = await read_limited(request, limit)  # however many TCP segments it comes in
    except RequestTimeout:
        body = None
    if body is None:
        return _reply(request, svc, svc.malformed, verifier, now)
    entry = svc.cache.get(body, now)
    if entry is not None:
        svc.count(entry.status, "memory", verifier)
        return web.Response(body=entry.body, headers=entry.headers(now))
    answer = await svc.answer(body, body, _client(request, verifier))
    return _reply(request, svc, answer, verifier, time.time())


async def _background(app: web.Application):
    svc = app[SERVICE]
    await svc.load_responders()
    tasks = [asyncio.create_task(coro, name=f"ocsp-{coro.__name__}") for coro in (svc.flusher(), svc.maintain())]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await svc.flush()  # nothing counted is lost on a clean shutdown
    if svc.channel is not None:
        svc.channel.unsubscribe(svc._on_notify)


def setup(app: web.Application, rt) -> None:
    app[SERVICE] = Responder.from_runtime(rt)
    app[CLIENTS] = rt.clients
    app.router.add_post("/ocsp", post_ocsp)
    app.router.add_post("/ocsp/", post_ocsp)
    app.router.add_get("/ocsp/{req:.+}", get_ocsp)
    app.cleanup_ctx.append(_background)
