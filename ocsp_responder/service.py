"""The responder of one process: answers from memory, from the shared PostgreSQL cache, or signed on
demand by the delegated responder key of the issuing CA generation; keeps the memory cache correct by
listening to status changes; counts verifiers' answers for billing.

Every failure becomes an OCSP response status (ca_core.ocsp.ResponseStatus), never an exception that
reaches HTTP: overload and an unavailable token or database are tryLater (RFC 6960 2.3).
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Histogram

from ca_core import ocsp
from ca_core.clock import JST, Clock
from ca_core.config import CAs, OCSPConfig
from ca_core.errors import ShomeiError
from ca_core.ocsp import ResponseStatus
from storage import cas, ocsp as store
from hsm.signer import DEFERRABLE, Signer
from plumbing.status_channel import StatusChannel

from .cache import Entry, ResponseCache
from .responders import renew_responders

log = logging.getLogger(__name__)

ANSWERS = Counter("shomei_ocsp_responses_total", "OCSP answers by certificate status (or error status) and source",
                  ["status", "source"])
MINUTES_KEPT = dt.timedelta(days=2)  # answers per minute kept for the status page
MISS_LATENCY = Histogram("shomei_ocsp_miss_seconds", "Time to answer an OCSP request not in process memory",
                         ["source"], buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5))
_MISS_SIGNED = MISS_LATENCY.labels("signed")
_MISS_DATABASE = MISS_LATENCY.labels("database")
VERIFIER_ANSWERS = Counter("shomei_ocsp_verifier_answers_total",
                           "Successful OCSP answers per registered verifier (the first ocsp.verifier_metric_labels "
                           "verifiers seen by a process are named, the rest count as 'other'; exact per-verifier "
                           "counts for billing are in the table ocsp_verifier_usage)", ["verifier"])

NONCES_REFUSED = Counter("shomei_ocsp_nonce_refused_total",
                         "Nonces not honoured because a client went over its rate (the cached answer was sent)")

ERROR_BODIES = {s: ocsp.error_response(s) for s in ResponseStatus if s != ResponseStatus.successful}


@dataclass(frozen=True)
class ResponderKey:
    """The delegated responder of one CA generation."""

    record_id: int
    key_label: str
    certificate_der: bytes
    key_hash: bytes
    not_after: dt.datetime


@dataclass(frozen=True)
class Answer:
    body: bytes
    entry: Entry | None  # cacheable answers carry their RFC 5019 headers
    status: str  # for metrics: a certificate status or the error status name
    successful: bool
    source: str = "error"  # memory | database | signed | error


def _error(status: ResponseStatus) -> Answer:
    return Answer(ERROR_BODIES[status], None, status.name, False)


class Responder:
    """The responder of one process, built from a pool, a Signer, a clock, the CA generations (which it
    reloads), its settings, the status channel that keeps its memory cache right (None: no memory
    cache) and the CA settings its responder certificates are renewed with."""

    def __init__(self, *, pool, signer: Signer, clock: Clock, directory, settings: OCSPConfig,
                 channel: StatusChannel | None, cas_cfg: CAs):
        self.pool = pool
        self.signer = signer
        self.clock = clock
        self.directory = directory  # IssuerSource with reload() (plumbing.runtime.IssuerDirectory)
        self.cas_cfg = cas_cfg
        self.cfg = settings
        self.cache = ResponseCache(self.cfg.cache_entries)
        self._issuers = directory.issuers
        self.index = ocsp.IssuerIndex(self._issuers)
        self.responders: dict[int, ResponderKey] = {}
        self._responders_loaded = float("-inf")
        self._pending = 0
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._to_store: list[tuple] = []
        self.usage: dict[int, int] = {}
        self._verifier_labels: dict[str, object] = {}
        self._answers = {}
        self.minutes: dict[int, list[int]] = {}  # UTC minute (epoch // 60) -> [answers, misses, errors]
        self._minute, self._tally = -1, [0, 0, 0]
        self.verifier_mode = self.cfg.access == "verifier"
        self.max_get_chars = 4 * (self.cfg.max_request_bytes // 3 + 1)  # base64 of the largest request
        self.malformed = _error(ResponseStatus.malformed_request)
        self._nonce_buckets: dict = {}  # client -> (tokens, last refill, monotonic seconds)
        self._produced_at = dt.datetime.min.replace(tzinfo=dt.timezone.utc)  # the newest producedAt signed
        self.channel = channel
        if channel is not None:
            channel.subscribe(self._on_notify, self._on_channel)

    @classmethod
    def from_runtime(cls, rt) -> "Responder":
        return cls(pool=rt.pool, signer=rt.signer, clock=rt.clock, directory=rt.directory, settings=rt.cfg.ocsp,
                   channel=rt.status, cas_cfg=rt.cfg.ca)

    # -- metrics ---------------------------------------------------------------------------------
    def count(self, status: str, source: str, verifier=None, successful: bool = True) -> None:
        child = self._answers.get((status, source))
        if child is None:
            child = self._answers[(status, source)] = ANSWERS.labels(status, source)
        child.inc()
        minute = int(time.time()) // 60
        if minute != self._minute:
            self._minute = minute
            self._tally = self.minutes.setdefault(minute, [0, 0, 0])
        tally = self._tally
        tally[0] += 1
        if not successful:
            tally[2] += 1
        elif source != "memory":
            tally[1] += 1
        if verifier is not None and successful:
            self.usage[verifier.id] = self.usage.get(verifier.id, 0) + 1
            label = self._verifier_labels.get(verifier.name)
            if label is None:
                name = verifier.name if len(self._verifier_labels) < self.cfg.verifier_metric_labels else "other"
                label = self._verifier_labels[verifier.name] = VERIFIER_ANSWERS.labels(name)
            label.inc()

    # -- answering -------------------------------------------------------------------------------
    def _check_issuers(self) -> None:
        if self.directory.issuers is not self._issuers:
            self._issuers = self.directory.issuers
            self.index = ocsp.IssuerIndex(self._issuers)

    async def answer(self, raw: bytes, key, client=None) -> Answer:
        """Answer the DER request ``raw``; ``key`` is its raw form for the memory cache; ``client`` (a
        verifier id or an address) is whom the nonce limit counts. Never raises."""
        try:
            return await self._answer(raw, key, client)
        except Exception:
            log.exception("OCSP answer failed")
            return _error(ResponseStatus.internal_error)

    async def _answer(self, raw: bytes, key, client=None) -> Answer:
        parsed = ocsp.parse_request(raw, max_certs=self.cfg.max_certs_per_request)
        if isinstance(parsed, ResponseStatus):
            return _error(parsed)
        self._check_issuers()
        issuer = self.index.resolve(parsed)
        if issuer is ResponseStatus.unauthorized and await self.directory.reload_on_miss():
            await self.load_responders()  # a generation another process just made, with its responder
            self._check_issuers()
            issuer = self.index.resolve(parsed)
        if isinstance(issuer, ResponseStatus):
            return _error(issuer)
        responder = self.responders.get(issuer.db_id)
        if responder is None and time.monotonic() - self._responders_loaded >= 1.0:
            # A generation this process has just learnt of (a rollover elsewhere): its responder was made
            # with it. At most once a second, so a generation truly without one costs no load.
            try:
                await self.load_responders()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return _error(ResponseStatus.try_later)
            responder = self.responders.get(issuer.db_id)
        if responder is None:
            log.error("no OCSP responder certificate for %s g%d", issuer.ca_id, issuer.generation)
            return _error(ResponseStatus.try_later)
        if parsed.nonce is not None:
            if self._nonce_allowed(client):
                # A nonce asks for a fresh answer bound to this request (RFC 8954): signed now, never cached.
                return await self._bounded(self._make(issuer, responder, parsed, self.cache.seq))
            NONCES_REFUSED.inc()
            parsed = dataclasses.replace(parsed, nonce=None)  # the cached answer, without the nonce
            key = None
        cert_key = parsed.cert_key
        entry = self.cache.get(cert_key, time.time())
        if entry is not None:
            if key is not None:
                self.cache.put((key,), entry, self.cache.seq)
            return Answer(entry.body, entry, entry.status, True, "memory")
        # Concurrent misses for the same CertIDs share one signature.
        pending = self._inflight.get(cert_key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[cert_key] = fut
        try:
            result = await self._bounded(self._make(issuer, responder, parsed, self.cache.seq, key))
            fut.set_result(result)
            return result
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._inflight[cert_key]

    async def _bounded(self, coro) -> Answer:
        if self._pending >= self.cfg.max_pending_signatures:
            coro.close()
            return _error(ResponseStatus.try_later)
        self._pending += 1
        try:
            return await coro
        except (ShomeiError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
            # Token or database unavailable: the client may retry (RFC 6960 2.3 tryLater).
            log.warning("OCSP answer deferred: %s", type(exc).__name__)
            return _error(ResponseStatus.try_later)
        finally:
            self._pending -= 1

    async def _make(self, issuer, responder: ResponderKey, parsed: ocsp.ParsedRequest, since: int,
                    key=None) -> Answer:
        started = time.perf_counter()
        now = self.clock.now()
        if now < self._produced_at:  # the host clock stepped back: never an answer older than one served
            now = self._produced_at
        self._produced_at = now
        validity = dt.timedelta(seconds=self.cfg.validity_seconds)
        single = len(parsed.certs) == 1 and parsed.nonce is None
        if single:
            cert = parsed.certs[0]
            fresh_after = now + validity - dt.timedelta(seconds=self.cfg.refresh_seconds)
            async with self.pool.acquire() as conn:
                found = await store.status(conn, issuer.db_id, cert.serial, cert_id=cert.cert_id_der,
                                           fresh_after=fresh_after)
            statuses = [found.status]
            cached = found.cached
            self.cache.put_status(issuer.db_id, cert.serial, found.status, since)
        else:
            # Statuses known in memory are as current as the memory cache (same invalidation).
            statuses = [self.cache.get_status(issuer.db_id, c.serial) for c in parsed.certs]
            missing = [c.serial for c, st in zip(parsed.certs, statuses) if st is None]
            if missing:
                async with self.pool.acquire() as conn:
                    found = dict(zip(missing, await store.statuses(conn, issuer.db_id, missing)))
                statuses = [st or found[c.serial] for c, st in zip(parsed.certs, statuses)]
                for serial, st in found.items():
                    self.cache.put_status(issuer.db_id, serial, st, since)
            cached = None
        serials = tuple(c.serial for c in parsed.certs)
        label = statuses[0].label if len(statuses) == 1 else "mixed"
        if cached is not None:
            entry = self._entry(cached.response, cached.this_update, cached.next_update, serials, label)
            self.cache.put((parsed.cert_key, key) if key is not None else (parsed.cert_key,), entry, since)
            _MISS_DATABASE.observe(time.perf_counter() - started)
            return Answer(entry.body, entry, label, True, "database")

        next_update = min(now + validity, responder.not_after)
        if next_update <= now:
            log.error("the OCSP responder certificate of %s g%d has expired", issuer.ca_id, issuer.generation)
            return _error(ResponseStatus.try_later)
        tbs = ocsp.response_data(responder_key_hash=responder.key_hash, produced_at=now,
                                 singles=[(c.cert_id_der, s) for c, s in zip(parsed.certs, statuses)],
                                 this_update=now, next_update=next_update, nonce=parsed.nonce)
        signature = await self.signer.sign(responder.key_label, issuer.algorithm, tbs, priority=DEFERRABLE)
        body = ocsp.assemble(tbs, issuer.algorithm, signature, responder.certificate_der)
        _MISS_SIGNED.observe(time.perf_counter() - started)
        if parsed.nonce is not None:
            return Answer(body, None, label, True, "signed")
        entry = self._entry(body, now, next_update, serials, label)
        self.cache.put((parsed.cert_key, key) if key is not None else (parsed.cert_key,), entry, since)
        if single:
            self._to_store.append((parsed.certs[0].cert_id_der, issuer.db_id, serials[0], statuses[0].key, body,
                                   now, next_update))
        return Answer(body, entry, label, True, "signed")

    def _entry(self, body: bytes, this_update: dt.datetime, next_update: dt.datetime, serials, label) -> Entry:
        tu, nu = this_update.timestamp(), next_update.timestamp()
        return Entry.make(body, tu, nu, tu + self.cfg.refresh_seconds, serials, label)

    def _nonce_allowed(self, client) -> bool:
        """A token bucket per client: ``nonce_signatures_per_client`` a second, bursts of twice that."""
        rate = self.cfg.nonce_signatures_per_client
        now = time.monotonic()
        tokens, last = self._nonce_buckets.get(client, (2.0 * rate, now))
        tokens = min(2.0 * rate, tokens + (now - last) * rate)
        if len(self._nonce_buckets) > 10_000:  # bounded memory: forget idle clients
            self._nonce_buckets.clear()
        if tokens < 1:
            self._nonce_buckets[client] = (tokens, now)
            return False
        self._nonce_buckets[client] = (tokens - 1, now)
        return True

    # -- background work -------------------------------------------------------------------------
    async def load_responders(self) -> None:
        """Pick up the newest responder certificate of every CA generation (renewals by any process)."""
        async with self.pool.acquire() as conn:
            latest = await cas.latest_responders(conn)
        self._responders_loaded = time.monotonic()
        self.responders = {gen: ResponderKey(rec.id, rec.key_label, rec.certificate,
                                             ocsp.responder_key_hash(rec.certificate), rec.not_after)
                           for gen, rec in latest.items()}

    def _on_notify(self, payload: str) -> None:
        if payload == "*":  # a bulk change (e.g. a feed batch): drop everything
            self.cache.clear()
            return
        try:
            serial = int(payload, 16)
        except (TypeError, ValueError):
            log.warning("ignored a malformed status notification")
            return
        self.cache.invalidate(serial)

    def _on_channel(self, up: bool) -> None:
        """The memory cache is used only while the status channel is up; on either change it starts empty
        (notices may have been missed)."""
        self.cache.clear()
        self.cache.enabled = up

    @property
    def listener_pid(self) -> int | None:
        return self.channel.pid if self.channel is not None else None

    async def flush(self, usage: bool = True) -> None:
        """Write queued answers to the shared cache and (``usage``) verifiers' counts to the billing table
        and the answers per minute to the activity table."""
        rows, self._to_store = self._to_store, []
        counts, minutes = {}, {}
        if usage:
            counts, self.usage = self.usage, {}
            minutes, self.minutes = self.minutes, {}
            self._minute = -1  # the next answer opens a fresh tally
        if not rows and not counts and not minutes:
            return
        try:
            async with self.pool.acquire() as conn:
                if rows:
                    await store.store_responses(conn, rows)
                if counts:
                    await store.add_usage(conn, self.clock.now().astimezone(JST).date(), counts)
                if minutes:
                    await store.add_minutes(conn, minutes)
        except Exception as exc:  # keep the counts for the next flush; cached rows are only an optimisation
            log.warning("OCSP flush failed: %s", type(exc).__name__)
            for cid, n in counts.items():
                self.usage[cid] = self.usage.get(cid, 0) + n
            for minute, (a, m, e) in minutes.items():
                tally = self.minutes.setdefault(minute, [0, 0, 0])
                tally[0] += a
                tally[1] += m
                tally[2] += e
            self._minute = -1

    async def flusher(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            due = time.monotonic() - last >= self.cfg.usage_flush_seconds
            if due:
                last = time.monotonic()
            await self.flush(usage=due)

    async def maintain(self) -> None:
        """Reload responder certificates and CA generations; renew responders close to expiry (the
        advisory lock in renew_responders makes one process do it); purge expired shared answers."""
        next_renew = time.monotonic() + min(self.cfg.renew_check_seconds, 300)
        while True:
            await asyncio.sleep(self.cfg.reload_seconds)
            try:
                if time.monotonic() >= next_renew:
                    next_renew = time.monotonic() + self.cfg.renew_check_seconds
                    for line in await renew_responders(self.pool, self.signer, self.clock, self.directory.issuers,
                                                       self.cas_cfg):
                        log.info("%s", line)
                    async with self.pool.acquire() as conn:
                        await store.purge_expired(conn, self.clock.now())
                        await store.purge_minutes(conn, before=dt.datetime.now(dt.timezone.utc) - MINUTES_KEPT)
                await self.directory.reload()
                await self.load_responders()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("OCSP maintenance failed: %s", type(exc).__name__)
