"""HTTP plumbing shared by every component's handlers: the one place where the error tree becomes
status codes, and where request bodies are read under a size limit and parsed into models."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

import pydantic
from aiohttp import web
from prometheus_client import Counter

from ca_core import errors
from storage.db import DATABASE_DOWN

log = logging.getLogger("shomei.http")

UNAVAILABLE = Counter("shomei_unavailable_total", "Answers 503 (a dependency down: database, token, ...) by code",
                      ["code"])


# The one mapping from the error tree to HTTP status codes (most specific class first).
STATUS = (
    (errors.RequestTimeout, 408),
    (errors.PayloadTooLarge, 413),
    (errors.UnsupportedMediaType, 415),
    (errors.PolicyViolation, 422),
    (errors.InvalidRequest, 400),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.Unavailable, 503),
)


def status_for(exc: errors.ShomeiError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(exc: errors.ShomeiError) -> web.Response:
    status = status_for(exc)
    headers = {}
    if isinstance(exc, errors.Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
        UNAVAILABLE.labels(exc.code).inc()
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="shomei"'
    return web.json_response({"error": exc.as_dict()}, status=status, headers=headers)


def make_error_middleware(admit: Callable[[web.Request], None] | None = None):
    """Typed errors -> JSON error bodies; anything unexpected -> 500 internal_error without details.
    ``admit(request)``, if given, runs first inside it (and may raise a typed error): the shell's listener
    check, without a middleware layer of its own on every request."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        return await _handle(request, handler, admit)

    return middleware


async def _handle(request: web.Request, handler, admit):
    try:
        if admit is not None:
            admit(request)
        return await handler(request)
    except errors.ShomeiError as exc:
        if status_for(exc) >= 500:
            log.warning("%s %s -> %s", request.method, request.path, exc.code)
        return error_response(exc)
    except DATABASE_DOWN as exc:
        # A connection refused, reset or timed out wherever it happened (pool acquisition included):
        # the transaction, if any, was rolled back, so nothing is half-done; the client may retry.
        log.warning("%s %s -> database unavailable (%s)", request.method, request.path, type(exc).__name__)
        return error_response(errors.Unavailable("the database is unavailable; nothing was recorded, retry later",
                                                 code="database_unavailable"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status, "http_error")
        return web.json_response({"error": {"code": code, "message": exc.reason, "field": None}},
                                 status=exc.status, headers={k: v for k, v in exc.headers.items()
                                                             if k in ("Allow",)})
    except Exception:  # never a stack trace to the client
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response({"error": {"code": "internal_error",
                                            "message": "internal error; nothing was recorded", "field": None}},
                                 status=500)


Messages = Callable[[str], tuple[str, str]]  # error code -> (English, Japanese) message


def _refuse(cls, default: str, messages: Messages | None, **kw) -> errors.ShomeiError:
    if messages is None:
        return cls(default, **kw)
    en, ja = messages(cls.code)
    return cls(en, message_ja=ja, **kw)


BODY_READ_SECONDS = 10.0  # a body that does not arrive within this is refused (slow senders hold no slot)


async def read_limited(request: web.Request, limit: int, timeout: float | None = None) -> bytes | None:
    """The whole body however it is split across TCP segments, or None when it is larger than ``limit``.
    Raises RequestTimeout when it does not arrive within ``timeout``."""
    async def _read() -> bytes | None:
        # StreamReader.read(n) returns what has arrived (up to n bytes), not n bytes: read until EOF.
        chunks, size = [], 0
        while True:
            chunk = await request.content.read(min(limit + 1 - size, 1 << 20))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None

    if request.content_length is not None and request.content_length > limit:
        return None
    content = request.content
    if content.is_eof():
        # The whole body has arrived already (a small body comes with its headers): nothing to wait
        # for, so no reading task and no timer.
        body = content.read_nowait(-1)
        return None if len(body) > limit else body
    timeout = BODY_READ_SECONDS if timeout is None else timeout
    try:
        return await asyncio.wait_for(_read(), timeout)
    except asyncio.TimeoutError:
        raise errors.RequestTimeout(f"the body did not arrive within {timeout:g} s") from None


async def read_body(request: web.Request, limit: int, content_types: tuple[str, ...], *,
                    messages: Messages | None = None) -> bytes:
    """The request body, refused (415, 413) when of another media type or larger than ``limit``;
    ``messages`` words those refusals for the audience of an endpoint (the online window's residents)."""
    ctype = request.content_type
    if ctype not in content_types:
        raise _refuse(errors.UnsupportedMediaType, f"Content-Type must be {' or '.join(content_types)}",
                      messages, field="Content-Type")
    try:
        body = await read_limited(request, limit)
    except errors.RequestTimeout as exc:
        raise _refuse(errors.RequestTimeout, exc.message, messages) from None
    if body is None:
        raise _refuse(errors.PayloadTooLarge, f"body larger than {limit} bytes", messages)
    return body


def _field(loc) -> str:
    return ".".join(str(p) for p in loc) or None


async def read_model(request: web.Request, model: type[pydantic.BaseModel], limit: int):
    """Parse a JSON body into ``model`` (unknown fields refused); raises InvalidRequest naming the field."""
    body = await read_body(request, limit, ("application/json",))
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested beyond any use
        raise errors.InvalidRequest("the body is not valid JSON", code="malformed_json") from None
    return parse_model(model, data)


def parse_model(model: type[pydantic.BaseModel], data):
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = _field(first["loc"])
        if first["type"] == "extra_forbidden":
            raise errors.InvalidRequest(f"unknown field {field}", field=field, code="unknown_field") from None
        if first["type"] == "missing":
            raise errors.InvalidRequest(f"missing field {field}", field=field, code="missing_field") from None
        raise errors.InvalidRequest(f"{field}: {first['msg']}", field=field, code="invalid_field") from None


PRIVATE = "shomei_private_listener"


def private(handler):
    """Mark a handler as served on the private listener only (terminals, the feed, operations); the
    shell answers 404 for it on the public listener."""
    setattr(handler, PRIVATE, True)
    return handler


def is_private(handler) -> bool:
    return bool(getattr(handler, PRIVATE, False))
