"""Serving the published CRLs, and the publishing schedule inside `shomei serve`.

Each host serves its own copy of the newest published CRL of a path (crl_publisher.copies: the bytes are
kept in PostgreSQL and copied to the host's folder when it is behind, checked against the CA's
signature); a full CRL can be hundreds of MB and is streamed from disk. Each answer is
DER (application/pkix-crl) with an ETag and Last-Modified (thisUpdate), Cache-Control up to
nextUpdate, and 304 on a matching If-None-Match or If-Modified-Since.

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
from dataclasses import dataclass

from aiohttp import web

from ca_core import crl as crl_core
from ca_core.errors import NotFound, Unavailable
from ca_core.kinds import KINDS
from plumbing.tasks import run_in_background
from storage import crls
from storage.db import DATABASE_DOWN

from .copies import Copies, CopyRefused
from .publisher import Publisher, Target

log = logging.getLogger(__name__)

_PARTITION = re.compile(r"^g[0-9]{1,4}-p[0-9]{1,9}(-delta)?\.crl$")
_GENERATION = re.compile(r"^g([0-9]{1,4})$")
_INFO_CACHE: dict[tuple, crl_core.CRLInfo] = {}


def _info(path, key: tuple) -> crl_core.CRLInfo:
    info = _INFO_CACHE.get(key)
    if info is None:
        with open(path, "rb") as f:
            info = crl_core.read_info(lambda offset, size: os.pread(f.fileno(), size, offset))
        if len(_INFO_CACHE) > 4096:
            _INFO_CACHE.clear()
        _INFO_CACHE[key] = info
    return info


def _resolve(issuers, ca: str, name: str, gen: str | None) -> str:
    if ca not in KINDS:
        raise NotFound(f"no CA {ca!r}; CAs are 'signing' and 'auth'", field="ca", code="unknown_ca")
    if gen is None and _PARTITION.match(name):
        return f"{ca}/{name}"
    if name not in ("full.crl", "delta.crl"):
        raise NotFound(f"no CRL named {name}", code="unknown_crl")
    if gen is None:
        issuer = issuers.current(ca)
        if issuer is None:
            raise NotFound(f"CA {ca} has no key yet", code="unknown_crl")
        gen = f"g{issuer.generation}"
    elif not _GENERATION.match(gen):
        raise NotFound(f"no CA generation {gen}", code="unknown_crl")
    return f"{ca}/{gen}/{name}"


_PARTITION_PARTS = re.compile(r"^g([0-9]{1,4})-p([0-9]{1,9})(-delta)?\.crl$")


async def _publish_new_partition(publisher: Publisher, ca: str, name: str) -> None:
    """A certificate names its partition CRL from the moment it is issued: a partition that has
    certificates but no CRL yet (before the scheduler's next tick) is published on this request."""
    m = _PARTITION_PARTS.match(name)
    if m is None:
        return
    generation, partition, delta = int(m.group(1)), int(m.group(2)), bool(m.group(3))
    issuer = next((i for i in publisher.issuers.issuers.generations(ca) if i.generation == generation), None)
    if issuer is None:
        return
    base = await publisher.targets(issuer, "base", [partition], full=False)
    async with publisher.pool.acquire() as conn:
        if partition not in await crls.partitions(conn, issuer.db_id):
            return
    await publisher.publish_many(base + ([Target(issuer, base[0].scope, "delta")] if delta else []))


async def get_crl(request: web.Request) -> web.StreamResponse:
    """A published CRL, streamed from this host's copy by aiohttp's FileResponse (ETag, Last-Modified,
    304, Range, HEAD), with Cache-Control and Expires up to its nextUpdate."""
    svc = request.app[SERVICE]
    ca, name = request.match_info["ca"], request.match_info["name"]
    rel = _resolve(svc.publisher.issuers.issuers, ca, name, request.match_info.get("gen"))
    try:
        path = await svc.copies.current(rel)
        if path is None and request.match_info.get("gen") is None:
            await _publish_new_partition(svc.publisher, ca, name)
            path = await svc.copies.current(rel, fresh=True)
    except DATABASE_DOWN as exc:  # serve what this host has; a CRL stays valid until its nextUpdate
        log.warning("CRL %s served from this host's copy: database unavailable (%s)", rel, type(exc).__name__)
        path = svc.publisher.out / rel
        if not path.exists():
            raise Unavailable(f"CRL {rel} is not on this host and the database is unavailable",
                              code="database_unavailable") from None
    except CopyRefused:
        raise Unavailable(f"CRL {rel} could not be copied to this host; try again", code="crl_unavailable") from None
    if path is None:
        raise NotFound(f"CRL {rel} has not been published", code="crl_not_published")
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"CRL {rel} has not been published", code="crl_not_published") from None
    info = _info(path, (rel, st.st_ino, st.st_mtime_ns, st.st_size))
    max_age = max(0, int((info.next_update - svc.publisher.clock.now()).total_seconds())) if info.next_update else 0
    headers = {"Cache-Control": f"public, max-age={max_age}, no-transform", "Content-Type": "application/pkix-crl"}
    if info.next_update:
        headers["Expires"] = info.next_update.astimezone(dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
    return web.FileResponse(path, headers=headers)


async def _scheduler(publisher: Publisher):
    """Publish what is due, every crl.tick_seconds. Several processes or hosts may run it: each CRL is
    published under its lease, and due-ness is checked again under the lease."""
    while True:
        try:
            for outcome in await publisher.run_due():
                if outcome.skipped and outcome.skipped != "not due":
                    log.info("CRL %s skipped: %s", outcome.target, outcome.skipped)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep the schedule alive; the next tick retries
            log.exception("CRL publishing failed; retrying at the next tick")
        await asyncio.sleep(publisher.settings.tick_seconds)


@dataclass(frozen=True)
class CRLEndpoints:
    publisher: Publisher
    copies: Copies


SERVICE = web.AppKey("crl", CRLEndpoints)


def setup(app, rt) -> None:
    publisher = Publisher.from_runtime(rt)
    svc = app[SERVICE] = CRLEndpoints(publisher, Copies(pool=rt.pool, out=publisher.out, issuers=rt.directory))
    app.router.add_get("/crl/{ca}/{name}", get_crl)
    app.router.add_get("/crl/{ca}/{gen}/{name}", get_crl)
    # The schedule runs in every worker of `shomei serve` (the leases make one of them publish each CRL,
    # so a worker that dies takes no schedule with it), not in applications built for tests or tools.
    if svc.publisher.settings.schedule and rt.worker_index is not None:
        run_in_background(app, "crl-scheduler", lambda: _scheduler(svc.publisher))
