"""Publishing CRLs: full and partition CRLs (complete, "base") and their deltas, per CA generation.

One issuance, under the scope's lease (an advisory lock in PostgreSQL, so one publisher at a time
across processes and machines):

1. accepted online revocations become effective (activate_pending), committed, with revocationDate =
   this issue's thisUpdate: from that commit OCSP answers revoked, and the CRL lists them;
2. a CRL number is allocated and committed (never goes backwards, shared by base and delta);
3. in one REPEATABLE READ transaction: the snapshot is recorded, the count and size of the entries
   are read (they fix the DER header), and the stored entry DER is streamed in serial order, pages
   concatenated by the server, hashed and written to a temporary file by a worker thread while the
   next page is fetched;
4. the token signs the digest only; the signature is appended and the file synced;
5. the pages went into crl_content as they streamed, in a transaction of their own; the head and tail
   parts and the CRL's row (with its snapshot, which defines what its deltas contain) join it, and its
   commit is the publication, seen by every host at once (crl_publisher.copies); then this host's
   file is replaced by rename, the previous issue kept as ``<name>.prev``.

Every complete CRL of a CA generation at once (the daily issue: the scheduler, `shomei crl publish`, a
retiring generation's final CRLs) is one pass (Publisher.publish_complete): one snapshot, the entries read
once in (partition, serial) order, each page going into its partition CRL and into the full CRL, which then
lists them partition by partition; each partition CRL is published as soon as it is complete, and the full
CRL's content in PostgreSQL refers to the partitions' entry parts (migration 0017) instead of a copy.

Files: ``{output}/{ca}/g{gen}-p{n}.crl`` and ``-delta.crl`` (the names certificates carry), and
``{output}/{ca}/g{gen}/full.crl`` and ``delta.crl``; /crl/{ca}/full.crl and delta.crl serve the
current generation. The file's mtime is set to thisUpdate (Last-Modified when served).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import glob
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from ca_core import crl as crl_core
from ca_core.ca import Issuer, IssuerSource
from ca_core.clock import Clock
from ca_core.config import CRLConfig
from ca_core.kinds import KINDS
from ca_core.profiles import CertificateProfile, partition_name
from ca_core.revocation import Reason, encode_entry
from hsm.signer import Signer
from plumbing.status_channel import StatusSync, no_sync
from storage import cas, crls, revocations

from .files import install, set_stamp

log = logging.getLogger(__name__)

CRL_NUMBER = Gauge("shomei_crl_number", "Number of the last CRL published", ["ca", "kind"],
                   multiprocess_mode="max")
CRL_ENTRIES = Gauge("shomei_crl_entries", "Entries of the last CRL published", ["ca", "kind"],
                    multiprocess_mode="mostrecent")
CRL_BYTES = Gauge("shomei_crl_bytes", "Size of the last CRL published, octets", ["ca", "kind"],
                  multiprocess_mode="mostrecent")
CRL_PUBLISHED = Counter("shomei_crl_published_total", "CRL issuances", ["ca", "kind", "result"])
CRL_SECONDS = Histogram("shomei_crl_publish_seconds", "Time to publish one CRL", ["ca", "kind"],
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))

_CHUNK = 8 << 20
_ENTRY_OCTETS = 48  # a typical stored CRL entry (serial, date, reasonCode): sizes a first issue's header room
_SYNC_EVERY = 64 << 20


async def activate_pending(conn, at: dt.datetime) -> int:
    """In the caller's transaction: every accepted online revocation becomes effective at ``at``, which
    is its revocationDate in the CRL entry encoded here and in OCSP (docs/domain.md, online window).
    Returns how many."""
    pending = await revocations.lock_pending(conn)
    entries = [(p, encode_entry(p.serial, at, Reason(p.reason), p.invalidity_date)) for p in pending]
    return await revocations.make_effective(conn, at, entries)


def output_dir(cfg) -> Path:
    return Path(cfg.crl.output_dir or Path(cfg.var_dir) / "crl")


@dataclass(frozen=True)
class Target:
    """One CRL: a CA generation, a scope ('full' or 'p<n>') and a kind ('base' or 'delta')."""

    issuer: Issuer
    scope: str
    kind: str
    final: bool = False  # the last CRL of a retiring generation: nextUpdate at the CA certificate's end

    @property
    def partition(self) -> int | None:
        return crls.scope_partition(self.scope)

    @property
    def path(self) -> str:
        """Path under the output folder, equal to the URL path under /crl/."""
        gen = self.issuer.generation
        suffix = "-delta" if self.kind == "delta" else ""
        if self.partition is None:
            return f"{self.issuer.ca_id}/g{gen}/{'delta' if self.kind == 'delta' else 'full'}.crl"
        return f"{self.issuer.ca_id}/{partition_name(gen, self.partition)}{suffix}.crl"

    @property
    def metric_kind(self) -> str:
        return "delta" if self.kind == "delta" else ("full" if self.partition is None else "partition")

    @property
    def label(self) -> str:
        return f"{self.issuer.ca_id}-g{self.issuer.generation}"

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class Outcome:
    target: Target
    published: crls.PublishedCRL | None
    skipped: str | None = None  # why nothing was published (lease busy, not due, no base)
    seconds: float = 0.0


def _fdatasync_quietly(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError:  # the final fsync reports real failures
        pass


class _Writer:
    """A CRL file being written. The entries go to the temporary file as pages arrive, after room
    left for the headers, which depend on their count and total size (known at the end; the room is
    sized from the previous issue's size, and the rare wrong guess costs one copy). The TBSCertList
    is then hashed by reading the file back (page cache), the token signs the digest, and the
    signature and headers are written in place. Memory: the pages in flight only."""

    def __init__(self, final: Path, spec: crl_core.CRLSpec, size_hint: int, upload: "_Upload | None" = None,
                 keep_pages: bool = False):
        self.final = final
        # keep_pages: the pages stay in memory until the digest (a partition CRL: at most partition_size
        # entries), so the TBSCertList is hashed from them instead of being read back from the file
        self._pages: list[bytes] | None = [] if keep_pages else None
        self.upload = upload
        self.spec = spec
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        self.max_suffix = crl_core.max_suffix_length(spec.algorithm)
        count_hint = 1 if size_hint else 0
        self.entries_at = self._head_length(count_hint, size_hint)
        self.count = 0
        self.size = 0
        self.tbs_len = 0
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crl-writer")
        self._pending = None
        self._synced = 0
        self._syncing: threading.Thread | None = None
        self._fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)

    def _head_length(self, count: int, size: int) -> int:
        tbs_len = crl_core.tbs_length(self.spec, count, size)
        return (len(crl_core.signed_prefix(tbs_len, self.max_suffix))
                + len(crl_core.tbs_header(self.spec, count, size)))

    def _pwrite_all(self, data, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    async def add(self, count: int, data: bytes) -> None:
        """Queue a page of entries (written in order by the worker thread; one page in flight)."""
        if self._pending is not None:
            await self._pending
        offset = self.entries_at + self.size
        self.size += len(data)
        self.count += count
        if self._pages is not None:
            self._pages.append(data)
        self._pending = asyncio.get_running_loop().run_in_executor(self._ex, self._pwrite_all, data, offset)
        if self.size - self._synced >= _SYNC_EVERY and (self._syncing is None or not self._syncing.is_alive()):
            # a large file (the full CRL) goes to disk as it grows, so that little is left for the final sync
            self._synced = self.size
            self._syncing = threading.Thread(target=_fdatasync_quietly, args=(self._fd,), daemon=True)
            self._syncing.start()
        if self.upload is not None:
            await self.upload.add(data)

    async def finish_tbs(self) -> bytes:
        """Write the headers and the extensions, and return the digest of the TBSCertList."""
        if self._pending is not None:
            await self._pending
            self._pending = None
        if self._syncing is not None:  # the fd may be replaced by _move_entries
            await asyncio.get_running_loop().run_in_executor(self._ex, self._syncing.join)
        return await asyncio.get_running_loop().run_in_executor(self._ex, self._finish_tbs)

    def _finish_tbs(self) -> bytes:
        if (self.count == 0) != (self.size == 0):
            raise RuntimeError("entry count and size disagree")
        # Start writing the entries to disk while they are hashed (the final fsync then has little left).
        early_sync = None
        if self.size > _CHUNK:
            early_sync = threading.Thread(target=_fdatasync_quietly, args=(self._fd,), daemon=True)
            early_sync.start()
        header = crl_core.tbs_header(self.spec, self.count, self.size)
        self.tbs_len = crl_core.tbs_length(self.spec, self.count, self.size)
        prefix_len = len(crl_core.signed_prefix(self.tbs_len, self.max_suffix))
        if prefix_len + len(header) != self.entries_at:  # the guess was wrong: move the entries once
            self._move_entries(prefix_len + len(header))
        self.tbs_at = prefix_len
        self._pwrite_all(header, prefix_len)
        self._pwrite_all(crl_core.tbs_trailer(self.spec), self.entries_at + self.size)
        h = self.spec.algorithm.new_hash()
        offset, end = prefix_len, prefix_len + self.tbs_len
        if self._pages is not None:
            h.update(header)
            for page in self._pages:
                h.update(page)
            h.update(crl_core.tbs_trailer(self.spec))
            self._pages = None
        else:
            # read back (page cache) into one buffer, reused: memory stays flat however large the CRL
            buf = bytearray(min(_CHUNK, end - offset))
            view = memoryview(buf)
            while offset < end:
                n = os.preadv(self._fd, [view[:min(len(buf), end - offset)]], offset)
                if not n:
                    raise RuntimeError("short read of the CRL being written")
                h.update(view[:n])
                offset += n
            view.release()
        if early_sync is not None:
            early_sync.join()
        return h.digest()

    def _move_entries(self, new_at: int) -> None:
        moved = self.tmp.with_suffix(".move")
        fd = os.open(moved, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        offset = 0
        while offset < self.size:
            chunk = os.pread(self._fd, min(_CHUNK, self.size - offset), self.entries_at + offset)
            os.pwrite(fd, chunk, new_at + offset)
            offset += len(chunk)
        os.close(self._fd)
        os.replace(moved, self.tmp)
        self._fd = fd
        self.entries_at = new_at

    async def finish(self, signature: bytes, keep_previous: bool = True) -> int:
        """Append the signature, sync, keep the previous issue and rename into place; returns the size."""
        size = await self.seal(signature)
        await self.install(keep_previous)
        return size

    async def seal(self, signature: bytes) -> int:
        """Append the signature and sync the temporary file; returns the size (nothing is replaced yet)."""
        return await asyncio.get_running_loop().run_in_executor(self._ex, self._seal, signature)

    def _seal(self, signature: bytes) -> int:
        suffix = crl_core.signed_suffix(self.spec.algorithm, signature)
        prefix = crl_core.signed_prefix(self.tbs_len, len(suffix))
        end = self.tbs_at + self.tbs_len
        self._pwrite_all(suffix, end)
        shift = 0
        if len(prefix) != self.tbs_at:  # a short ECDSA signature changed the length octets (rare)
            shift = self.tbs_at - len(prefix)
            offset = self.tbs_at
            while offset < end + len(suffix):
                chunk = os.pread(self._fd, min(_CHUNK, end + len(suffix) - offset), offset)
                os.pwrite(self._fd, chunk, offset - shift)
                offset += len(chunk)
            os.ftruncate(self._fd, end + len(suffix) - shift)
        self._pwrite_all(prefix, 0)
        self.total = len(prefix) + self.tbs_len + len(suffix)
        # What comes before the entries and after them, for the database's copy (the entries went as pages).
        entries_at = self.entries_at - shift
        self.head = os.pread(self._fd, entries_at, 0)
        self.tail = os.pread(self._fd, self.total - entries_at - self.size, entries_at + self.size)
        os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = None
        set_stamp(self.tmp, self.spec.this_update, self.spec.number)
        return self.total

    async def install(self, keep_previous: bool = True) -> None:
        """Rename the sealed file into place (keeping the previous issue as ``<name>.prev``)."""
        await asyncio.get_running_loop().run_in_executor(self._ex, self._install, keep_previous)
        self._ex.shutdown(wait=False)

    def _install(self, keep_previous: bool) -> None:
        if keep_previous and self.final.exists():
            prev_tmp = self.final.with_name(f".{self.final.name}.{os.getpid()}.prev.tmp")
            try:
                os.unlink(prev_tmp)
            except FileNotFoundError:
                pass
            os.link(self.final, prev_tmp)
            os.replace(prev_tmp, self.final.with_name(self.final.name + ".prev"))
        install(self.tmp, self.final, self.spec.number)

    def abort(self) -> None:
        """Drop the temporary file (the published CRL is untouched)."""
        self._ex.shutdown(wait=True)  # a page write in flight finishes before its file is closed
        if self._syncing is not None:
            self._syncing.join()
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        finally:
            for path in (self.tmp, self.tmp.with_suffix(".move")):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


class _Upload:
    """A CRL's bytes going into the database as the entries stream (crl_content, migration 0015): one
    pooled connection in one transaction, a page in flight at a time; the head and tail parts and the
    CRL's row follow in the same transaction, whose commit is the publication."""

    def __init__(self, pool):
        self.pool = pool
        self.conn = None
        self.tr = None
        self.crl_id = None
        self.parts = 0
        self.refs: dict[int, tuple[int, int, int] | None] = {}  # part -> (source CRL id, first, last part)
        self._pending = None

    async def start(self) -> None:
        self.conn = await self.pool.acquire()
        self.tr = self.conn.transaction()
        await self.tr.start()
        self.crl_id = await crls.new_crl_id(self.conn)

    def run_first(self, statement) -> None:
        """Run ``statement(conn)`` in this transaction before the parts that follow (in the background)."""
        self._pending = asyncio.ensure_future(statement(self.conn))

    async def add(self, data: bytes) -> None:
        if self._pending is not None:
            await self._pending
        self.parts += 1
        self._pending = asyncio.ensure_future(crls.add_content(self.conn, self.crl_id, self.parts, data))

    def reserve_ref(self) -> int:
        """The next part will be a reference to another CRL's parts (set_ref, before commit)."""
        self.parts += 1
        self.refs[self.parts] = None
        return self.parts

    def set_ref(self, part: int, source_id: int, first: int, last: int) -> None:
        if last < first:  # nothing to refer to (no entries)
            self.refs.pop(part)
        else:
            self.refs[part] = (source_id, first, last)

    async def commit(self, head: bytes, tail: bytes, **record) -> int:
        if self._pending is not None:
            await self._pending
            self._pending = None
        if any(r is None for r in self.refs.values()):
            raise RuntimeError("a referenced part was never completed")
        await crls.add_content_refs(self.conn, self.crl_id, [(p, *r) for p, r in sorted(self.refs.items())])
        await crls.add_content(self.conn, self.crl_id, 0, head)
        await crls.add_content(self.conn, self.crl_id, self.parts + 1, tail)
        t0 = time.perf_counter()
        rid = await crls.record_published(self.conn, crl_id=self.crl_id, **record)
        t1 = time.perf_counter()
        await self.tr.commit()
        if self.refs:
            log.debug("recorded (with pruning) %.3f s, committed %.3f s", t1 - t0, time.perf_counter() - t1)
        self.tr = None
        return rid

    async def close(self) -> None:
        """Roll back what was not committed and give the connection back (always called)."""
        try:
            if self._pending is not None:
                await asyncio.gather(self._pending, return_exceptions=True)
            if self.tr is not None:
                await self.tr.rollback()
        finally:
            if self.conn is not None:
                await self.pool.release(self.conn)
                self.conn = None


@dataclass
class _PartitionOut:
    """A partition CRL being written in a pass (writer None: its entries go into the full CRL only)."""

    partition: int
    target: Target | None
    writer: _Writer | None
    upload: _Upload | None
    ref: int | None  # the full CRL's part that refers to this partition CRL's entry parts


class _StatusChangesHeld:
    """The status-change lock held by one issue, from before thisUpdate is read until its snapshot."""

    def __init__(self, conn):
        self.conn = conn
        self.held = False

    async def start(self) -> None:
        await revocations.hold_status_changes(self.conn)
        self.held = True

    async def end(self) -> None:
        if self.held:
            self.held = False
            await revocations.allow_status_changes(self.conn)


class Publisher:
    """Publishes the CRLs of every CA generation; built from a pool, a Signer, a clock, the CA
    generations, the certificate profiles (their CRL URLs), its settings, the partition size and the
    output folder."""

    def __init__(self, *, pool, signer: Signer, clock: Clock, issuers: IssuerSource,
                 profiles: dict[str, CertificateProfile], settings: CRLConfig, partition_size: int, out: Path,
                 status_sync: StatusSync = no_sync):
        self.pool = pool
        self.signer = signer
        self.clock = clock
        self.issuers = issuers
        self.profiles = profiles
        self.settings = settings
        self.partition_size = partition_size
        self.out = out
        self.status_sync = status_sync
        self.publish_deltas = all(p.publish_deltas for p in profiles.values())

    @classmethod
    def from_runtime(cls, rt) -> "Publisher":
        return cls(pool=rt.pool, signer=rt.signer, clock=rt.clock, issuers=rt.directory,
                   profiles={ca: CertificateProfile.from_config(rt.cfg, ca) for ca in KINDS},
                   settings=rt.cfg.crl, partition_size=rt.cfg.issuance.partition_size, out=output_dir(rt.cfg),
                   status_sync=rt.status.sync)

    # -- what a CRL says about its scope ---------------------------------------------------------
    def url(self, target: Target) -> str:
        return f"{self.profiles[target.issuer.ca_id].base_url}/crl/{target.path}"

    def spec(self, target: Target, number: int, this_update: dt.datetime, base_number: int | None) -> crl_core.CRLSpec:
        c = self.settings
        delta = target.kind == "delta"
        minutes = c.delta_validity_minutes if delta else c.full_validity_minutes
        idp = None
        if target.partition is not None:
            # the same URL as the certificates' cRLDistributionPoints (RFC 5280 5.2.5); a delta has the
            # same IDP as its base (same scope, 5.2.4)
            idp = self.profiles[target.issuer.ca_id].crl_url(partition_name(target.issuer.generation,
                                                                            target.partition))
        freshest = None
        if not delta and self.publish_deltas and not target.final:
            freshest = self.url(Target(target.issuer, target.scope, "delta"))
        next_update = this_update + dt.timedelta(minutes=minutes)
        if target.final:  # no CRL will follow; none is needed once the CA certificate itself has expired
            next_update = max(next_update, target.issuer.not_after)
        return crl_core.CRLSpec(issuer=target.issuer, number=number, this_update=this_update,
                                next_update=next_update, idp_url=idp,
                                delta_base=base_number if delta else None, freshest_url=freshest)

    # -- one CRL ---------------------------------------------------------------------------------
    async def publish(self, target: Target, *, progress=None, due=None) -> Outcome:
        """Publish one CRL. Skips (Outcome.skipped) when another publisher holds the scope's lease, when
        ``due(last_of_this_kind, last_base)`` is given and says False under the lease, or for a delta
        without a base. ``progress(n)`` is called as entries pass."""
        started = time.perf_counter()
        issuer = target.issuer
        gen_id = issuer.db_id
        async with self.pool.acquire() as conn:
            if not await crls.try_lease(conn, gen_id, target.scope):
                return Outcome(target, None, "another publisher holds the lease")
            hold = None
            try:
                base = await crls.latest(conn, gen_id, target.scope, "base")
                if due is not None:
                    last = base if target.kind == "base" else await crls.latest(conn, gen_id, target.scope, "delta")
                    if not due(last, base):
                        return Outcome(target, None, "not due")
                if target.kind == "delta" and base is None:
                    return Outcome(target, None, "no base CRL yet")
                if target.kind == "base":
                    base = None
                # Status changes in progress end before thisUpdate is read, and new ones wait until the
                # snapshot is taken (storage.revocations.hold_status_changes): every revocation dated
                # before thisUpdate is in this CRL.
                hold = _StatusChangesHeld(conn)
                await hold.start()
                # A host clock stepped back (an NTP correction) never dates a CRL before the previous
                # issue of its scope (RFC 5280 5.1.2.4: thisUpdate is the date of this issue).
                newest = await crls.latest(conn, gen_id, target.scope)
                now = self.clock.now()
                if newest is not None and now < newest.this_update:
                    log.warning("clock behind the last CRL of %s by %s; thisUpdate kept at the last one's",
                                target.path, newest.this_update - now)
                    now = newest.this_update
                marks = [("start", time.perf_counter())]
                async with conn.transaction():
                    # online revocations accepted before this issue become effective in it (committed
                    # before the snapshot is taken)
                    activated = await activate_pending(conn, now)
                marks.append(("prepare", time.perf_counter()))
                # The CRL number is committed on another connection while the entries are read; it is
                # needed only for the extensions, after the entries (the lease orders the issues).
                number = asyncio.ensure_future(self._allocate_number(gen_id, target.scope))
                try:
                    published = await self._issue(conn, target, number, now, base, progress, marks, hold)
                except BaseException as exc:
                    CRL_PUBLISHED.labels(target.label, target.metric_kind, "error").inc()
                    if isinstance(exc, Exception):
                        await hold.end()
                        await self._record_failure(conn, target, exc)
                    raise
                finally:
                    await asyncio.gather(number, return_exceptions=True)
                await crls.clear_failure(conn, gen_id, target.scope, target.kind)
                if activated:
                    await self.status_sync()
            finally:
                if hold is not None:
                    await hold.end()
                await crls.release_lease(conn, gen_id, target.scope)
        seconds = time.perf_counter() - started
        kind = target.metric_kind
        CRL_PUBLISHED.labels(target.label, kind, "ok").inc()
        CRL_SECONDS.labels(target.label, kind).observe(seconds)
        CRL_NUMBER.labels(target.label, kind).set(published.number)
        CRL_ENTRIES.labels(target.label, kind).set(published.entries)
        CRL_BYTES.labels(target.label, kind).set(published.bytes)
        log.info("published %s number %d: %d entries, %d octets, %.3f s", target.path, published.number,
                 published.entries, published.bytes, seconds)
        return Outcome(target, published, None, seconds)

    async def _record_failure(self, conn, target: Target, exc: Exception) -> None:
        """Keep what failed where every process's /healthz sees it; the last good CRL stays served and
        the schedule retries. Never raises (the publication's own error is what the caller sees)."""
        reason = f"{type(exc).__name__}: {exc}"[:300]
        log.error("CRL %s not published: %s", target.path, reason)
        try:
            await crls.record_failure(conn, target.issuer.db_id, target.scope, target.kind, target.path,
                                      self.clock.now(), reason)
        except Exception as err:  # the database may be what failed
            log.warning("could not record the failure of %s: %s", target.path, type(err).__name__)

    async def _allocate_number(self, gen_id: int, scope: str) -> int:
        async with self.pool.acquire() as conn:
            return await crls.allocate_number(conn, gen_id, scope)

    async def _issue(self, conn, target: Target, number_future, now: dt.datetime, base, progress, marks,
                     hold: "_StatusChangesHeld"):
        final = self.out / target.path
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in glob.glob(str(final.with_name(f".{final.name}.*.tmp"))):  # a crashed run's leftovers
            os.unlink(stale)
        base_number = base.number if base else None
        # the number is not known yet: a stand-in of the same kind sizes the headers
        spec = self.spec(target, base_number + 1 if base else 1, now, base_number)
        writer = None
        upload = _Upload(self.pool)
        try:
            await upload.start()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await crls.begin_snapshot(conn)
                await hold.end()
                if target.kind == "base":
                    previous = await crls.latest(conn, target.issuer.db_id, target.scope, "base")
                    writer = _Writer(final, spec, previous.bytes if previous else 0, upload)
                    await self._stream(conn, target, now, writer, previous, progress)
                else:
                    released = await crls.released_since(conn, target.issuer.db_id, target.partition,
                                                         base.snapshot, now)
                    removes = [(serial, crl_core.remove_from_crl_entry(int.from_bytes(serial, "big"), held_at))
                               for serial, held_at in released]
                    count, data = await crls.delta_entries(conn, target.issuer.db_id, target.partition,
                                                           base.snapshot, now, removes)
                    writer = _Writer(final, spec, len(data), upload)
                    if count:
                        await writer.add(count, data)
                    if progress:
                        progress(count)
            marks.append(("read", time.perf_counter()))
            number = await number_future
            spec = writer.spec = self.spec(target, number, now, base_number)
            digest = await writer.finish_tbs()
            marks.append(("hash", time.perf_counter()))
            signature = await self.signer.sign_digest(target.issuer.key_label, target.issuer.algorithm, digest)
            marks.append(("sign", time.perf_counter()))
            size = await writer.seal(signature)
            marks.append(("write", time.perf_counter()))
            # The publication: the row and every part commit together (no host sees half a CRL), then
            # this host's file is replaced.
            rid = await upload.commit(
                writer.head, writer.tail, generation_id=target.issuer.db_id, scope=target.scope, kind=target.kind,
                number=number, base_id=base.id if base else None, this_update=now, next_update=spec.next_update,
                snapshot=snapshot, entries=writer.count, size=size, sha256=digest, path=target.path)
            marks.append(("commit", time.perf_counter()))
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            await upload.close()
        try:
            await writer.install()
        except OSError as exc:  # published all the same: this host copies it from the database when asked
            log.warning("CRL %s number %d published, but not installed here: %s", target.path, number, exc)
            writer.abort()
        marks.append(("install", time.perf_counter()))
        log.debug("%s phases: %s", target.path,
                  ", ".join(f"{name} {t - marks[i][1]:.3f}" for i, (name, t) in enumerate(marks[1:])))
        return crls.PublishedCRL(rid, target.issuer.db_id, target.scope, target.kind, number,
                                 base.id if base else None, now, spec.next_update, snapshot, writer.count, size,
                                 digest, target.path)

    async def _stream(self, conn, target: Target, now: dt.datetime, writer: _Writer, previous, progress) -> None:
        """Stream the entries of a complete CRL into ``writer`` in serial order: serial ranges sized to
        about crl.page_rows entries, fetched by up to crl.stream_connections connections sharing the
        snapshot of ``conn``'s transaction, consumed in order (at most one page per connection in
        flight)."""
        c = self.settings
        # An upper bound of the entries keeps pages small (memory flat) as the CRL grows: a partition
        # holds at most partition_size certificates; the full CRL at most the table's row estimate.
        if target.partition is not None:
            expected = self.partition_size
        else:
            expected = await crls.estimated_revocations(conn)
        expected = max(expected, previous.entries if previous else 0)
        ranges = crls.serial_ranges(min(4096, expected // c.page_rows + 1))
        async with self._same_snapshot(conn, min(c.stream_connections, len(ranges))) as conns:
            width = len(conns)

            def fetch(i):
                low, high = ranges[i]
                return asyncio.ensure_future(crls.entry_page(conns[i % width], target.issuer.db_id,
                                                             target.partition, now, low, high))

            inflight = [fetch(i) for i in range(width)]
            try:
                for i in range(len(ranges)):
                    n, der = await inflight[i]
                    if i + width < len(ranges):
                        inflight.append(fetch(i + width))
                    inflight[i] = None
                    if n:
                        await writer.add(n, der)
                        if progress:
                            progress(n)
            except BaseException:
                await _cancel_pages(inflight)
                raise

    @contextlib.asynccontextmanager
    async def _same_snapshot(self, conn, width: int):
        """``conn`` and up to ``width - 1`` more pooled connections reading in its transaction's snapshot
        (REPEATABLE READ, exported and joined); the extra ones are rolled back and returned after."""
        conns, extra = [conn], []
        try:
            if width > 1:
                snapshot_id = await crls.export_snapshot(conn)
                for _ in range(width - 1):
                    other = await self.pool.acquire()
                    tr = other.transaction(isolation="repeatable_read", readonly=True)
                    extra.append((other, tr))
                    await tr.start()
                    await crls.join_snapshot(other, snapshot_id)
                    conns.append(other)
            yield conns
        finally:
            for other, tr in extra:
                try:
                    await tr.rollback()
                finally:
                    await self.pool.release(other)

    # -- every complete CRL of a generation in one pass ------------------------------------------
    async def publish_complete(self, issuer: Issuer, *, partitions: list[int] | None = None, final: bool = False,
                               due=None, progress=None) -> list[Outcome]:
        """The full CRL and the partition CRLs of one CA generation from ONE snapshot, every entry read once.

        Under the leases of the full CRL and of each partition (a partition whose lease is held elsewhere is
        not published, its entries still go into the full CRL), the entries are streamed in (partition,
        serial) order; each page goes into its partition CRL (file, and its content in PostgreSQL) and into
        the full CRL's file. Each partition CRL is signed and published (its own commit) as soon as its last
        page has passed, while the next partitions stream. The full CRL lists the entries partition by
        partition (RFC 5280 does not order CRL entries); its content in PostgreSQL refers to the partition
        CRLs' entry parts instead of a second copy (migration 0017), and its commit, after every partition
        it refers to, is its publication. ``due(last_base, last_base)`` is checked under the leases for each
        scope; when the full CRL is not published (lease busy, not due) nothing is, and every scope is
        reported skipped. Returns one Outcome per scope, the full CRL first."""
        started = time.perf_counter()
        gen_id = issuer.db_id
        async with self.pool.acquire() as conn:
            if partitions is None:
                partitions = await crls.partitions(conn, gen_id)
            wanted = [crls.FULL] + [crls.partition_scope(p) for p in partitions]
            leased = await crls.try_leases(conn, gen_id, wanted)
            hold = None
            try:
                if crls.FULL not in leased:
                    return [Outcome(Target(issuer, s, "base", final), None, "another publisher holds the lease")
                            for s in wanted]
                latest = await crls.latest_by_scope(conn, gen_id)
                skipped: dict[str, str] = {}
                for scope in wanted:
                    last = latest.get((scope, "base"))
                    if scope not in leased:
                        skipped[scope] = "another publisher holds the lease"
                    elif due is not None and not due(last, last):
                        skipped[scope] = "not due"
                if crls.FULL in skipped:
                    return [Outcome(Target(issuer, s, "base", final), None, skipped.get(s, "full CRL not due"))
                            for s in wanted]
                publish = [s for s in wanted if s not in skipped]
                hold = _StatusChangesHeld(conn)
                await hold.start()
                newest = await crls.newest_this_update(conn, gen_id, publish)
                now = self.clock.now()
                if newest is not None and now < newest:
                    log.warning("clock behind the last CRL of %s g%d by %s; thisUpdate kept at the last one's",
                                issuer.ca_id, issuer.generation, newest - now)
                    now = newest
                async with conn.transaction():
                    activated = await activate_pending(conn, now)
                numbers = asyncio.ensure_future(self._allocate_numbers(gen_id, publish))
                full_target = Target(issuer, crls.FULL, "base", final)
                try:
                    done = await self._pass(conn, issuer, publish, numbers, now, latest, progress, hold, final,
                                            started)
                except BaseException as exc:
                    CRL_PUBLISHED.labels(full_target.label, "full", "error").inc()
                    if isinstance(exc, Exception):
                        await hold.end()
                        await self._record_failure(conn, full_target, exc)
                    raise
                finally:
                    await asyncio.gather(numbers, return_exceptions=True)
                await crls.clear_failures(conn, gen_id, list(done), "base")
                if activated:
                    await self.status_sync()
            finally:
                if hold is not None:
                    await hold.end()
                await crls.release_leases(conn, gen_id, leased)
        out = []
        for scope in wanted:
            target = Target(issuer, scope, "base", final)
            if scope in done:
                out.append(done[scope])
            else:
                out.append(Outcome(target, None, skipped.get(scope, "no such partition")))
        log.info("published %d complete CRLs of %s g%d in one pass, %.3f s", len(done), issuer.ca_id,
                 issuer.generation, time.perf_counter() - started)
        return out

    async def _allocate_numbers(self, gen_id: int, scopes: list[str]) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            return await crls.allocate_numbers(conn, gen_id, scopes)

    def _observe(self, outcome: Outcome) -> None:
        target, published = outcome.target, outcome.published
        kind = target.metric_kind
        CRL_PUBLISHED.labels(target.label, kind, "ok").inc()
        CRL_SECONDS.labels(target.label, kind).observe(outcome.seconds)
        CRL_NUMBER.labels(target.label, kind).set(published.number)
        CRL_ENTRIES.labels(target.label, kind).set(published.entries)
        CRL_BYTES.labels(target.label, kind).set(published.bytes)

    def _prepare_file(self, target: Target) -> Path:
        final = self.out / target.path
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in glob.glob(str(final.with_name(f".{final.name}.*.tmp"))):  # a crashed run's leftovers
            os.unlink(stale)
        return final

    async def _pass(self, conn, issuer: Issuer, publish: list[str], numbers, now: dt.datetime, latest, progress,
                    hold: "_StatusChangesHeld", final: bool, started: float) -> dict[str, Outcome]:
        c = self.settings
        done: dict[str, Outcome] = {}
        full_t = Target(issuer, crls.FULL, "base", final)
        prev_full = latest.get((crls.FULL, "base"))
        publish_parts = {crls.scope_partition(s) for s in publish if s != crls.FULL}
        full_upload = _Upload(self.pool)
        full_writer = None
        current = None
        finishing: list[asyncio.Future] = []
        snapshot = None

        async def finish_partition(cur: _PartitionOut) -> None:
            t = cur.target
            try:
                number = (await numbers)[t.scope]
                spec = cur.writer.spec = self.spec(t, number, now, None)
                digest = await cur.writer.finish_tbs()
                signature = await self.signer.sign_digest(issuer.key_label, issuer.algorithm, digest)
                size = await cur.writer.seal(signature)
                rid = await cur.upload.commit(
                    cur.writer.head, cur.writer.tail, generation_id=issuer.db_id, scope=t.scope, kind="base",
                    number=number, base_id=None, this_update=now, next_update=spec.next_update, snapshot=snapshot,
                    entries=cur.writer.count, size=size, sha256=digest, path=t.path)
            except BaseException:
                cur.writer.abort()
                raise
            finally:
                await cur.upload.close()
            full_upload.set_ref(cur.ref, rid, 1, cur.upload.parts)
            try:
                await cur.writer.install()
            except OSError as exc:
                log.warning("CRL %s number %d published, but not installed here: %s", t.path, number, exc)
                cur.writer.abort()
            outcome = Outcome(t, crls.PublishedCRL(rid, issuer.db_id, t.scope, "base", number, None, now,
                                                   spec.next_update, snapshot, cur.writer.count, size, digest,
                                                   t.path), None, time.perf_counter() - started)
            done[t.scope] = outcome
            self._observe(outcome)
            log.debug("published %s number %d: %d entries, %d octets", t.path, number, cur.writer.count, size)

        async def open_partition(p: int) -> _PartitionOut | None:
            if p not in publish_parts:
                return None
            t = Target(issuer, crls.partition_scope(p), "base", final)
            prev = latest.get((t.scope, "base"))
            upload = _Upload(self.pool)
            try:
                await upload.start()
                writer = _Writer(self._prepare_file(t), self.spec(t, prev.number + 1 if prev else 1, now, None),
                                 prev.bytes if prev else self.partition_size * _ENTRY_OCTETS, upload,
                                 keep_pages=True)
            except BaseException:
                await upload.close()
                raise
            return _PartitionOut(p, t, writer, upload, full_upload.reserve_ref())

        async def close_partition(cur: _PartitionOut) -> None:
            while len([f for f in finishing if not f.done()]) >= 2:  # at most two partitions finishing
                await asyncio.wait([f for f in finishing if not f.done()], return_when=asyncio.FIRST_COMPLETED)
            for f in finishing:
                if f.done() and f.exception() is not None:
                    raise f.exception()
            finishing.append(asyncio.ensure_future(finish_partition(cur)))

        try:
            await full_upload.start()
            # what the full CRL's commit makes due for pruning is done in its transaction while the pass streams
            full_upload.run_first(lambda c: crls.prune_ahead_of_pass(c, full_t.path, publish))
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await crls.begin_snapshot(conn)
                await hold.end()
                # read in the snapshot: every partition with an entry the snapshot sees is listed
                all_parts = await crls.partitions(conn, issuer.db_id)
                # The room left for the headers is sized from the previous issue, or for a first issue from
                # the planner's row estimate (only the magnitude matters: a wrong guess costs a copy of the file)
                full_hint = prev_full.bytes if prev_full else await crls.estimated_revocations(conn) * _ENTRY_OCTETS
                full_writer = _Writer(self._prepare_file(full_t),
                                      self.spec(full_t, prev_full.number + 1 if prev_full else 1, now, None),
                                      full_hint)
                per_part = crls.serial_ranges(max(self.partition_size, 1) // c.page_rows + 1)
                pages = [(p, low, high) for p in all_parts for low, high in per_part]
                async with self._same_snapshot(conn, max(1, min(c.stream_connections, len(pages)))) as conns:
                    width = len(conns)

                    def fetch(i):
                        p, low, high = pages[i]
                        return asyncio.ensure_future(crls.entry_page(conns[i % width], issuer.db_id, p, now,
                                                                     low, high))

                    inflight = [fetch(i) for i in range(min(width, len(pages)))]
                    waited = 0.0  # waiting for PostgreSQL's pages (the rest of the loop: writing them)
                    try:
                        for i in range(len(pages)):
                            t0 = time.perf_counter()
                            n, der = await inflight[i]
                            waited += time.perf_counter() - t0
                            if i + width < len(pages):
                                inflight.append(fetch(i + width))
                            inflight[i] = None
                            p = pages[i][0]
                            if current is None or current.partition != p:
                                if current is not None and current.writer is not None:
                                    cur, current = current, None
                                    await close_partition(cur)
                                current = await open_partition(p) or _PartitionOut(p, None, None, None, None)
                            if n:
                                await full_writer.add(n, der)
                                if current.writer is not None:
                                    await current.writer.add(n, der)
                                else:
                                    await full_upload.add(der)
                                if progress:
                                    progress(n)
                    except BaseException:
                        await _cancel_pages(inflight)
                        raise
            streamed = time.perf_counter()
            if current is not None and current.writer is not None:
                cur, current = current, None
                await close_partition(cur)
            number = (await numbers)[crls.FULL]
            spec = full_writer.spec = self.spec(full_t, number, now, None)
            digest = await full_writer.finish_tbs()
            hashed = time.perf_counter()
            signature = await self.signer.sign_digest(issuer.key_label, issuer.algorithm, digest)
            size = await full_writer.seal(signature)
            sealed = time.perf_counter()
            await asyncio.gather(*finishing)
            log.debug("partition CRLs finished %.3f s after the full CRL was sealed", time.perf_counter() - sealed)
            rid = await full_upload.commit(
                full_writer.head, full_writer.tail, generation_id=issuer.db_id, scope=crls.FULL, kind="base",
                number=number, base_id=None, this_update=now, next_update=spec.next_update, snapshot=snapshot,
                entries=full_writer.count, size=size, sha256=digest, path=full_t.path)
        except BaseException:
            for f in finishing:
                f.cancel()
            await asyncio.gather(*finishing, return_exceptions=True)
            if current is not None and current.writer is not None:
                current.writer.abort()
                await current.upload.close()
            if full_writer is not None:
                full_writer.abort()
            raise
        finally:
            await full_upload.close()
        committed = time.perf_counter()
        try:
            await full_writer.install()
        except OSError as exc:
            log.warning("CRL %s number %d published, but not installed here: %s", full_t.path, number, exc)
            full_writer.abort()
        log.debug("pass of %s g%d: streamed %.3f s (waiting for pages %.3f s), full CRL hashed %.3f s, signed and "
                  "sealed %.3f s, committed %.3f s, installed %.3f s", issuer.ca_id, issuer.generation,
                  streamed - started, waited, hashed - streamed, sealed - hashed, committed - sealed,
                  time.perf_counter() - committed)
        outcome = Outcome(full_t, crls.PublishedCRL(rid, issuer.db_id, crls.FULL, "base", number, None, now,
                                                     spec.next_update, snapshot, full_writer.count, size, digest,
                                                     full_t.path), None, time.perf_counter() - started)
        self._observe(outcome)
        log.info("published %s number %d: %d entries, %d octets, %.3f s (one pass with %d partition CRLs)",
                 full_t.path, number, full_writer.count, size, outcome.seconds, len(done))
        return {crls.FULL: outcome, **done}

    # -- many CRLs -------------------------------------------------------------------------------
    def generations(self, ca_ids=KINDS, retired: set[int] = frozenset()) -> list[Issuer]:
        """CA generations that still publish: every generation whose CA certificate has not expired and
        that is not retired (``retired``: their database ids)."""
        now = self.clock.now()
        return [i for ca in ca_ids for i in self.issuers.issuers.generations(ca)
                if i.not_after > now and i.db_id not in retired]

    async def retire_due(self) -> list[Outcome]:
        """Replaced generations whose every certificate has expired: a final complete CRL of each scope
        (nextUpdate at the CA certificate's end, no delta named), then the generation is retired."""
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            due = set(await cas.retirement_due(conn, now))
        done = []
        for issuer in self.generations():
            if issuer.db_id not in due:
                continue
            # every scope's final complete CRL in one pass (one snapshot); a scope skipped there (its lease
            # held elsewhere) is published on its own
            outcomes = await self.publish_complete(issuer, final=True)
            outcomes = [o if o.published else await self.publish(o.target) for o in outcomes]
            done += outcomes
            if all(o.published for o in outcomes):
                async with self.pool.acquire() as conn:
                    await cas.retire(conn, issuer.db_id, now)
                log.info("CA %s generation %d retired: its last certificate has expired; final CRLs published",
                         issuer.ca_id, issuer.generation)
        return done

    async def targets(self, issuer: Issuer, kind: str, partitions: list[int] | None = None,
                      full: bool = True) -> list[Target]:
        if partitions is None:
            async with self.pool.acquire() as conn:
                partitions = await crls.partitions(conn, issuer.db_id)
        scopes = ([crls.FULL] if full else []) + [crls.partition_scope(p) for p in partitions]
        return [Target(issuer, s, kind) for s in scopes]

    async def publish_many(self, targets: list[Target], *, progress=None) -> list[Outcome]:
        out = []
        for target in targets:
            out.append(await self.publish(target, progress=progress))
        return out

    async def run_due(self) -> list[Outcome]:
        """One scheduler pass, for every publishing CA generation and scope: a complete CRL when due (or
        never published: a new partition); a delta when the last one is due or older than the latest
        base (so that the delta a certificate names always matches the current base). Due-ness is
        checked again under each lease, so several schedulers publish each CRL once."""
        c = self.settings
        now = self.clock.now()
        full_due = now - dt.timedelta(minutes=c.full_interval_minutes)
        delta_due = now - dt.timedelta(minutes=c.delta_interval_minutes)

        def base_due(last, _base):
            return last is None or last.this_update <= full_due

        def delta_is_due(last, base):
            return base is not None and (last is None or last.number < base.number or last.this_update <= delta_due)

        done = await self.retire_due()
        async with self.pool.acquire() as conn:
            retired = await cas.retired_generation_ids(conn)
        for issuer in self.generations(retired=retired):
            async with self.pool.acquire() as conn:
                latest = await crls.latest_by_scope(conn, issuer.db_id)
            targets = await self.targets(issuer, "base")
            due_now = [t.scope for t in targets if base_due(latest.get((t.scope, "base")), None)]
            if crls.FULL in due_now and len(due_now) > 1:
                # the full CRL and partition CRLs due together (the daily issue): one pass, one snapshot,
                # every entry read once; what it skips is retried below, scope by scope
                for outcome in await self.publish_complete(
                        issuer, partitions=[crls.scope_partition(s) for s in due_now if s != crls.FULL],
                        due=base_due):
                    if outcome.published:
                        done.append(outcome)
                        latest[(outcome.target.scope, "base")] = outcome.published
            for target in targets:
                base = latest.get((target.scope, "base"))
                if base_due(base, base):
                    outcome = await self.publish(target, due=base_due)
                    done.append(outcome)
                    base = outcome.published or base
                if self.publish_deltas and delta_is_due(latest.get((target.scope, "delta")), base):
                    done.append(await self.publish(Target(issuer, target.scope, "delta"), due=delta_is_due))
        return done


async def _cancel_pages(inflight: list) -> None:
    """Cancel the page fetches still in flight (a stream that failed) and wait for them to end."""
    pending = [t for t in inflight if t is not None]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
