"""The online window (オンライン窓口): revocation and validity-check applications signed by the card.

The checks run in the order of docs/domain.md (online window, the checks); the pure ones are in
ca_core.online. The database part runs in one transaction: the nonce is recorded (a second use is
'replayed'), the certificate rows are locked, and an accepted revocation is stored as a pending
revocation row (effective_at NULL) that the CRL publisher makes effective at the next CRL issuance (crl_publisher.publisher.activate_pending).
"""
from __future__ import annotations

import datetime as dt
import logging

import asyncpg
from prometheus_client import Counter

from ca_core import errors, lifecycle, online
from ca_core.ca import IssuerSource
from ca_core.clock import Clock, format_rfc3339
from ca_core.config import RevocationConfig
from ca_core.kinds import SIGNING
from ca_core.serials import serial_bytes, serial_hex
from storage import audit, certificates as cert_store, online_nonces, revocations as rev_store
from storage.db import DATABASE_DOWN

log = logging.getLogger(__name__)

ONLINE = Counter("shomei_online_applications_total", "Online window applications by procedure and result",
                 ["procedure", "result"])


class OnlineWindow:
    """The online window, built from a pool, a clock, the CA generations and the revocation settings."""

    def __init__(self, *, pool, clock: Clock, issuers: IssuerSource, settings: RevocationConfig):
        self.pool = pool
        self.clock = clock
        self.issuers = issuers
        self.cfg = settings
        self.in_flight = 0

    @classmethod
    def from_runtime(cls, rt) -> "OnlineWindow":
        return cls(pool=rt.pool, clock=rt.clock, issuers=rt.directory, settings=rt.cfg.revocation)

    def try_enter(self, procedure: str) -> None:
        """Shed load: beyond ``online_max_in_flight`` requests in this process, answer busy (503)."""
        if self.in_flight >= self.cfg.online_max_in_flight:
            ONLINE.labels(procedure, "busy").inc()
            raise online.online_error("busy", procedure, retry_after=self.cfg.online_retry_after)
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    async def handle(self, procedure: str, body: bytes) -> dict:
        """Run an application through every check; returns the answer or raises the typed error."""
        try:
            answer = await self._handle(procedure, body)
        except errors.ShomeiError as exc:
            ONLINE.labels(procedure, exc.code).inc()
            raise
        except Exception:
            log.exception("online %s failed", procedure)
            ONLINE.labels(procedure, "internal_error").inc()
            raise online.online_error("internal_error", procedure) from None
        ONLINE.labels(procedure, answer.get("result") or answer["status"]).inc()
        return answer

    async def _handle(self, procedure: str, body: bytes) -> dict:
        now = self.clock.now()
        app = online.parse_application(body, procedure)
        issuer = self.issuers.issuers.by_key_id(app.authority_key_id) if app.authority_key_id else None
        if issuer is None:
            raise online.online_error("unknown_issuer", procedure)
        online.verify_certificate(app, issuer.certificate_der)
        online.verify_signature(app)
        online.check_serial(app)
        online.check_not_expired(app, now)
        online.check_fresh(app, now, dt.timedelta(seconds=self.cfg.online_max_skew_seconds))
        try:
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    return await self._record(conn, app, issuer, now)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "online_nonce_pkey":
                raise online.online_error("replayed", procedure, field="nonce") from None
            if exc.constraint_name == "revocation_pending":
                raise online.online_error("already_requested", procedure) from None
            raise
        except (*DATABASE_DOWN, asyncpg.DeadlockDetectedError):
            raise online.online_error("busy", procedure, retry_after=self.cfg.online_retry_after) from None

    async def _record(self, conn, app: online.Application, issuer, now: dt.datetime) -> dict:
        doc = app.document
        procedure = doc.procedure
        ref = "online:" + doc.nonce.hex()
        if not await online_nonces.claim(conn, nonce=doc.nonce, serial=serial_bytes(doc.serial), procedure=procedure,
                                         issued_at=doc.issued_at, at=now):
            raise online.online_error("replayed", procedure, field="nonce")
        cert = await cert_store.by_serial(conn, doc.serial)
        if cert is None or cert.ca_generation_id != issuer.db_id:
            # Signed by our CA but not in our records: not a certificate this service issued.
            raise online.online_error("unknown_issuer", procedure)
        if procedure == "validity_check":
            pending = await rev_store.pending_for(conn, cert.id)
            if cert.status == "revoked":
                result, detail = "revoked", None
            elif pending is not None:
                result, detail = "revocation_accepted", None
            elif cert.status == "held":
                result, detail = "revoked", "certificate_hold"
            else:
                result, detail = "valid", None
            await online_nonces.set_result(conn, doc.nonce, result)
            await audit.record(conn, action="online_validity_check", serial=serial_bytes(cert.serial),
                               request_id=ref, details={"result": result})
            answer = {"result": result, "serial": serial_hex(cert.serial), "kind": cert.kind, "checked_at": format_rfc3339(now)}
            if detail:
                answer["reason"] = detail
            return answer

        ids = {cert.id}
        if lifecycle.cascades(cert.kind):
            ids.update(s.id for s in await cert_store.live_of_resident(conn, cert.resident_hash, (SIGNING,)))
        locked = {c.id: c for c in await rev_store.lock_certificates(conn, ids)}
        cert = locked[cert.id]
        if cert.status == "revoked":
            raise online.online_error("already_revoked", procedure)
        if await rev_store.pending_for(conn, cert.id) is not None:
            raise online.online_error("already_requested", procedure)
        accepted = []
        for c in sorted(locked.values(), key=lambda c: c.id != cert.id):
            if c.status == "revoked" or (c.id != cert.id and await rev_store.pending_for(conn, c.id) is not None):
                continue
            reason = lifecycle.ONLINE_RULE.reason
            await rev_store.accept_pending(conn, c, reason=int(reason), at=now, source="online", source_ref=ref)
            await audit.record(conn, action="online_revocation_accepted", serial=serial_bytes(c.serial),
                               request_id=ref, details={"kind": c.kind, "cascade": c.id != cert.id})
            accepted.append({"serial": serial_hex(c.serial), "kind": c.kind})
        await online_nonces.set_result(conn, doc.nonce, "accepted")
        return {"status": "accepted", "serial": serial_hex(cert.serial), "accepted_at": format_rfc3339(now),
                "effective": "at the next CRL issuance", "certificates": accepted}
