"""HTTP plumbing shared by every component's handlers: the one place where the error tree becomes
status codes, request bodies are read under a size limit, and clients are authenticated."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time

import pydantic
from aiohttp import web

from ca_core import errors
from storage import clients as client_store

log = logging.getLogger("shomei.http")

RT = web.AppKey("rt", object)  # the Runtime of this process

# The one mapping from the error tree to HTTP status codes (most specific class first).
STATUS = (
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

# Codes that are well-formed but semantically unacceptable answer 422 rather than 400.
UNPROCESSABLE = {"character_not_allowed", "substitute_flags_mismatch", "invalid_birth_date", "invalid_sex",
                 "card_expired", "unknown_municipality", "key_not_allowed", "csr_signature_invalid"}


def status_for(exc: errors.ShomeiError) -> int:
    if exc.code in UNPROCESSABLE:
        return 422
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(exc: errors.ShomeiError) -> web.Response:
    status = status_for(exc)
    headers = {}
    if isinstance(exc, errors.Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="shomei"'
    return web.json_response({"error": exc.as_dict()}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Typed errors -> JSON error bodies; anything unexpected -> 500 internal_error without details."""
    try:
        return await handler(request)
    except errors.ShomeiError as exc:
        if status_for(exc) >= 500:
            log.warning("%s %s -> %s", request.method, request.path, exc.code)
        return error_response(exc)
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


async def read_body(request: web.Request, limit: int, content_types: tuple[str, ...]) -> bytes:
    """The request body, refused when larger than ``limit`` or of another media type."""
    ctype = request.content_type
    if ctype not in content_types:
        raise errors.UnsupportedMediaType(f"Content-Type must be {' or '.join(content_types)}",
                                          field="Content-Type")
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(f"body larger than {limit} bytes")
    # StreamReader.read(n) returns what has arrived (up to n bytes), not n bytes: read until EOF.
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(min(limit + 1 - size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"body larger than {limit} bytes")
    return b"".join(chunks)


def _field(loc) -> str:
    return ".".join(str(p) for p in loc) or None


async def read_model(request: web.Request, model: type[pydantic.BaseModel], limit: int):
    """Parse a JSON body into ``model`` (unknown fields refused); raises InvalidRequest naming the field."""
    body = await read_body(request, limit, ("application/json",))
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
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


_OPERATOR = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class ClientCache:
    """Bearer credential -> client, cached briefly to spare a query per request."""

    def __init__(self, pool, ttl: float = 30.0):
        self._pool = pool
        self._ttl = ttl
        self._cache: dict[str, tuple[float, object]] = {}

    async def lookup(self, token: str):
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


async def authenticate(request: web.Request, cache: ClientCache, *kinds: str):
    """The calling client, which must be of one of ``kinds``: 401 unknown, 403 wrong kind."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthenticated("missing bearer credential (Authorization: Bearer <credential>)")
    client = await cache.lookup(token.strip())
    if client is None:
        raise errors.Unauthenticated("unknown or disabled credential")
    if client.kind not in kinds:
        raise errors.Forbidden(f"a {client.kind} credential may not call this endpoint")
    return client


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


def run_in_background(app: web.Application, name: str, make_coro) -> None:
    """Run ``make_coro()`` as a task for the application's lifetime; cancel it on cleanup."""
    async def _ctx(_app):
        task = asyncio.create_task(make_coro(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(_ctx)
