"""Serving the published CRLs, and the publishing schedule inside `shomei serve`.

CRLs are served from the published files (the output folder; share it between hosts that serve),
never from the database: a full CRL can be hundreds of MB and is streamed from disk. Each answer is
DER (application/pkix-crl) with an ETag (CRL number and size), Last-Modified (thisUpdate),
Cache-Control up to nextUpdate, and 304 on a matching If-None-Match or If-Modified-Since.

GET /crl/{ca}/g{gen}-p{n}.crl and /crl/{ca}/g{gen}-p{n}-delta.crl   partition CRL and its delta
GET /crl/{ca}/full.crl and /crl/{ca}/delta.crl                      current generation
GET /crl/{ca}/g{gen}/full.crl and /crl/{ca}/g{gen}/delta.crl        any generation
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re

from aiohttp import web

from ca_core import crl as crl_core
from ca_core.errors import NotFound
from shomei.http import RT, run_in_background

from storage import crls

from .publisher import Publisher, Target, output_dir

log = logging.getLogger(__name__)

_PARTITION = re.compile(r"^g[0-9]{1,4}-p[0-9]{1,9}(-delta)?\.crl$")
_GENERATION = re.compile(r"^g([0-9]{1,4})$")
_CHUNK = 1 << 20
_INFO_CACHE: dict[tuple, crl_core.CRLInfo] = {}


def _info(fd: int, key: tuple) -> crl_core.CRLInfo:
    info = _INFO_CACHE.get(key)
    if info is None:
        info = crl_core.read_info(lambda offset, size: os.pread(fd, size, offset))
        if len(_INFO_CACHE) > 4096:
            _INFO_CACHE.clear()
        _INFO_CACHE[key] = info
    return info


def _resolve(rt, ca: str, name: str, gen: str | None) -> str:
    if ca not in ("signing", "auth"):
        raise NotFound(f"no CA {ca!r}; CAs are 'signing' and 'auth'", field="ca", code="unknown_ca")
    if gen is None and _PARTITION.match(name):
        return f"{ca}/{name}"
    if name not in ("full.crl", "delta.crl"):
        raise NotFound(f"no CRL named {name}", code="unknown_crl")
    if gen is None:
        issuer = rt.issuers.current(ca)
        if issuer is None:
            raise NotFound(f"CA {ca} has no key yet", code="unknown_crl")
        gen = f"g{issuer.generation}"
    elif not _GENERATION.match(gen):
        raise NotFound(f"no CA generation {gen}", code="unknown_crl")
    return f"{ca}/{gen}/{name}"


_PARTITION_PARTS = re.compile(r"^g([0-9]{1,4})-p([0-9]{1,9})(-delta)?\.crl$")


async def _publish_new_partition(rt, ca: str, name: str) -> None:
    """A certificate names its partition CRL from the moment it is issued: a partition that has
    certificates but no CRL yet (before the scheduler's next tick) is published on this request."""
    m = _PARTITION_PARTS.match(name)
    if m is None:
        return
    generation, partition, delta = int(m.group(1)), int(m.group(2)), bool(m.group(3))
    issuer = next((i for i in rt.issuers.generations(ca) if i.generation == generation), None)
    if issuer is None:
        return
    publisher = Publisher(rt)
    base = await publisher.targets(issuer, "base", [partition], full=False)
    async with rt.pool.acquire() as conn:
        if partition not in await crls.partitions(conn, issuer.db_id):
            return
    await publisher.publish_many(base + ([Target(issuer, base[0].scope, "delta")] if delta else []))


async def get_crl(request: web.Request) -> web.StreamResponse:
    rt = request.app[RT]
    ca, name = request.match_info["ca"], request.match_info["name"]
    rel = _resolve(rt, ca, name, request.match_info.get("gen"))
    path = output_dir(rt.cfg) / rel
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        if request.match_info.get("gen") is None:
            await _publish_new_partition(rt, ca, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"CRL {rel} has not been published", code="crl_not_published") from None
    try:
        st = os.fstat(fd)
        info = _info(fd, (rel, st.st_ino, st.st_mtime_ns, st.st_size))
        etag = f'"{info.number or 0:x}-{st.st_size:x}"'
        modified = info.this_update.astimezone(dt.timezone.utc)
        now = rt.clock.now()
        max_age = max(0, int((info.next_update - now).total_seconds())) if info.next_update else 0
        headers = {
            "ETag": etag,
            "Last-Modified": modified.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "Cache-Control": f"public, max-age={max_age}, no-transform",
            "Content-Type": "application/pkix-crl",
        }
        if info.next_update:
            headers["Expires"] = info.next_update.astimezone(dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
        inm = request.headers.get("If-None-Match")
        if inm is not None:
            if etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*":
                return web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        elif request.if_modified_since is not None and modified <= request.if_modified_since:
            return web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        resp = web.StreamResponse(headers=headers)
        resp.content_length = st.st_size
        await resp.prepare(request)
        if request.method != "HEAD":
            loop = asyncio.get_running_loop()
            offset = 0
            while offset < st.st_size:
                chunk = await loop.run_in_executor(None, os.pread, fd, min(_CHUNK, st.st_size - offset), offset)
                if not chunk:
                    break
                await resp.write(chunk)
                offset += len(chunk)
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)


async def _scheduler(rt):
    """Publish what is due, every crl.tick_seconds. Several processes or hosts may run it: each CRL is
    published under its lease, and due-ness is checked again under the lease."""
    publisher = Publisher(rt)
    while True:
        try:
            for outcome in await publisher.run_due():
                if outcome.skipped and outcome.skipped != "not due":
                    log.info("CRL %s skipped: %s", outcome.target, outcome.skipped)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep the schedule alive; the next tick retries
            log.exception("CRL publishing failed; retrying at the next tick")
        await asyncio.sleep(rt.cfg.crl.tick_seconds)


def setup(app, rt) -> None:
    app.router.add_get("/crl/{ca}/{name}", get_crl)
    app.router.add_get("/crl/{ca}/{gen}/{name}", get_crl)
    # The schedule runs in `shomei serve` (worker 0 of each host; leases order the hosts), not in
    # applications built for tests or tools.
    if rt.cfg.crl.schedule and rt.extras.get("worker_index") == 0:
        run_in_background(app, "crl-scheduler", lambda: _scheduler(rt))
