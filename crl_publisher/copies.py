"""Every host serves every CRL: the published bytes are in PostgreSQL (crl_content), and each host keeps
a copy of the newest CRL of each path in its own folder, the one it serves from.

On a request the host looks up the newest CRL of the path that has its content (at most once a second per
path and process), and when its own file is older it copies the bytes from the database into a temporary
file (a full CRL stored by reference is reassembled: its own parts and the partition CRLs' entry parts it
refers to, in order; storage.crls.content), checks them (the size, the SHA-256 of the TBSCertList against the digest the token signed, and the
signature against the issuing CA generation's key), and renames the file into place. Nothing unchecked is
ever served, and a host's file never goes back to a lower CRL number. With the database unreachable the
host serves the file it has.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from pathlib import Path

from prometheus_client import Counter

from ca_core import crl as crl_core
from storage import crls

from .files import install, number_of, set_stamp

log = logging.getLogger(__name__)

COPIES = Counter("shomei_crl_copies_total", "CRLs copied from the database to this host's folder, by result",
                 ["result"])
LOOKUP_SECONDS = 1.0  # a new CRL is served by every host within this long of its publication


class CopyRefused(Exception):
    """The database's bytes of a CRL did not check out (not served)."""


class Copies:
    def __init__(self, *, pool, out: Path, issuers):
        self.pool = pool
        self.out = out
        self.issuers = issuers  # IssuerSource: the generation that signed a CRL, for its key
        self._latest: dict[str, tuple[float, crls.PublishedCRL | None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def newest(self, path: str, *, fresh: bool = False) -> crls.PublishedCRL | None:
        """The newest CRL of ``path`` with content in the database (looked up at most once a second)."""
        now = time.monotonic()
        hit = self._latest.get(path)
        if hit is not None and not fresh and now - hit[0] < LOOKUP_SECONDS:
            return hit[1]
        async with self.pool.acquire() as conn:
            record = await crls.latest_with_content(conn, path)
        if len(self._latest) > 10_000:
            self._latest.clear()
        self._latest[path] = (now, record)
        return record

    async def current(self, path: str, *, fresh: bool = False) -> Path | None:
        """This host's file of ``path``, brought up to the newest published CRL first; None when neither
        the database nor this host has one. Raises what the database raises when it is unreachable."""
        local = self.out / path
        record = await self.newest(path, fresh=fresh)
        if record is None:
            return local if local.exists() else None  # e.g. published before CRLs were kept in the database
        have = number_of(local)
        if have is not None and have >= record.number:
            return local
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:
            have = number_of(local)
            if have is None or have < record.number:
                try:
                    await self._copy(record, local)
                except CopyRefused as exc:
                    COPIES.labels("refused").inc()
                    log.error("CRL %s number %d in the database refused: %s", path, record.number, exc)
                    if have is None:
                        raise
        return local

    async def _copy(self, record: crls.PublishedCRL, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.{secrets.token_hex(4)}.copy")
        loop = asyncio.get_running_loop()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            offset = 0
            async with self.pool.acquire() as conn:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    async for data in crls.content(conn, record.id):
                        await loop.run_in_executor(None, _pwrite_all, fd, data, offset)
                        offset += len(data)
            if offset != record.bytes:
                # gone meanwhile (replaced twice over), or damaged: the next request looks again
                self._latest.pop(record.path, None)
                raise CopyRefused(f"{offset} octets in the database, {record.bytes} recorded")
            issuer = await self._issuer(record)
            await loop.run_in_executor(None, _check, fd, record, issuer)
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        set_stamp(tmp, record.this_update, record.number)
        installed = await loop.run_in_executor(None, install, tmp, local, record.number)
        COPIES.labels("copied" if installed else "newer_here").inc()
        log.info("CRL %s number %d copied from the database (%d octets)", record.path, record.number, record.bytes)

    async def _issuer(self, record: crls.PublishedCRL):
        issuer = self.issuers.issuers.by_id(record.ca_generation_id)
        if issuer is None and await self.issuers.reload_on_miss():  # a generation made on another host
            issuer = self.issuers.issuers.by_id(record.ca_generation_id)
        if issuer is None:
            raise CopyRefused(f"CA generation {record.ca_generation_id} is unknown here")
        return issuer


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _check(fd: int, record: crls.PublishedCRL, issuer) -> None:
    """The copy is the CRL the token signed: its TBSCertList hashes to the recorded digest, and the
    signature is the issuing CA generation's."""
    def read_at(offset, size):
        return os.pread(fd, size, offset)
    try:
        layout = crl_core.signed_layout(read_at, record.bytes)
        h = issuer.algorithm.new_hash()
        offset = layout.tbs_start
        while offset < layout.tbs_end:
            chunk = os.pread(fd, min(8 << 20, layout.tbs_end - offset), offset)
            if not chunk:
                raise ValueError("short read")
            h.update(chunk)
            offset += len(chunk)
        digest = h.digest()
        if digest != record.sha256:
            raise ValueError("the TBSCertList does not hash to the digest the token signed")
        crl_core.verify_digest(issuer, layout, digest)
        if crl_core.read_info(read_at).number != record.number:
            raise ValueError("the CRL number differs from the record's")
    except ValueError as exc:
        raise CopyRefused(str(exc)) from None


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
