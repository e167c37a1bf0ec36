"""The municipal window (受付窓口): revocations, holds and hold releases, idempotent per request_id.

Each request runs in one transaction: the request id is claimed first (a retry waits for, then replays,
the first answer), the certificate rows are locked in id order, the rules of ca_core.lifecycle are
applied, the audit records and the stored answer are written, and only then is the answer sent.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import asyncpg
from prometheus_client import Counter

from ca_core import errors, lifecycle
from ca_core.records import CertificateRecord
from ca_core.resident import check_resident_code, resident_hash
from ca_core.clock import Clock, format_rfc3339
from ca_core.kinds import KINDS, SIGNING
from ca_core.revocation import Reason, encode_entry
from ca_core.serials import serial_bytes, serial_hex
from plumbing.authority import check_scope
from storage import audit, certificates as cert_store, revocations as rev_store, window_requests
from plumbing.status_channel import StatusSync, no_sync
from storage.db import unavailable_when_down

log = logging.getLogger(__name__)

WINDOW = Counter("shomei_window_requests_total", "Window revocation/hold/release requests", ["action", "result"])


@dataclass(frozen=True)
class WindowRequest:
    """A validated-for-shape window request."""

    action: str  # revoke | hold | release
    request_id: str
    serial: int | None
    resident_code: str | None
    kinds: tuple[str, ...]
    reason: str | None = None
    invalidity_date: dt.datetime | None = None

    def body_hash(self) -> bytes:
        data = asdict(self)
        data["invalidity_date"] = self.invalidity_date.isoformat() if self.invalidity_date else None
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()


@dataclass(frozen=True)
class WindowResult:
    created: bool  # False: a replay of an earlier identical request
    body: dict


class WindowService:
    """The window's revocations, holds and releases, built from a pool, a clock and the resident-hash key."""

    def __init__(self, *, pool, clock: Clock, resident_key: bytes, status_sync: StatusSync = no_sync):
        self.pool = pool
        self.clock = clock
        self.resident_key = resident_key
        self.status_sync = status_sync  # after a commit: every process has applied the change

    @classmethod
    def from_runtime(cls, rt) -> "WindowService":
        return cls(pool=rt.pool, clock=rt.clock, resident_key=rt.resident_key, status_sync=rt.status.sync)

    async def handle(self, client, operator_id: str, req: WindowRequest) -> WindowResult:
        """Run one window request; raises a ShomeiError subclass on any rejection (nothing recorded)."""
        try:
            result = await self._handle(client, operator_id, req)
        except errors.ShomeiError as exc:
            WINDOW.labels(req.action, exc.code if isinstance(exc, errors.Unavailable) else "rejected").inc()
            raise
        WINDOW.labels(req.action, "done" if result.created else "replayed").inc()
        return result

    def _validate(self, req: WindowRequest, now: dt.datetime):
        if (req.serial is None) == (req.resident_code is None):
            raise errors.InvalidRequest("give either serial or resident_code (with kinds)", field="serial",
                                        code="invalid_target")
        if req.resident_code is not None:
            check_resident_code(req.resident_code)
            if not req.kinds or any(k not in KINDS for k in req.kinds):
                raise errors.InvalidRequest("kinds must list 'signing' and/or 'auth'", field="kinds",
                                            code="invalid_kinds")
        if req.action == "revoke":
            rule = lifecycle.window_rule(req.reason)
            invalidity = lifecycle.check_invalidity_date(req.invalidity_date, now)
            if invalidity is not None and not rule.with_invalidity_date:
                raise errors.InvalidRequest("invalidity_date is only given with reason key_compromise",
                                            field="invalidity_date", code="invalid_invalidity_date")
            return rule, invalidity
        return None, None

    async def _handle(self, client, operator_id: str, req: WindowRequest) -> WindowResult:
        now = self.clock.now()
        rule, invalidity = self._validate(req, now)
        rhash = resident_hash(self.resident_key, req.resident_code) if req.resident_code else None
        try:
            with unavailable_when_down():
                async with self.pool.acquire() as conn:
                    async with conn.transaction():
                        await rev_store.enter_status_change(conn)
                        now = self.clock.now()  # after the lock: the date no CRL issued meanwhile can miss
                        row_id = await window_requests.claim(conn, client_id=client.id, request_id=req.request_id,
                                                             action=req.action, body_hash=req.body_hash(),
                                                             operator_id=operator_id)
                        if row_id is None:
                            return await self._replay(conn, client, req)
                        ctx = dict(conn=conn, client=client, operator_id=operator_id, req=req, now=now, rhash=rhash)
                        if req.action == "revoke":
                            body = await self._revoke(rule=rule, invalidity=invalidity, **ctx)
                        elif req.action == "hold":
                            body = await self._hold(**ctx)
                        else:
                            body = await self._release(**ctx)
                        body = {"request_id": req.request_id, **body}
                        await window_requests.set_response(conn, row_id, body)
        except asyncpg.DeadlockDetectedError:
            raise errors.Unavailable("concurrent changes to the same certificates; nothing was recorded, retry",
                                     code="concurrent_change", retry_after=1) from None
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name in ("revocation_in_force", "revocation_pending"):
                raise errors.Conflict("the certificate changed concurrently; nothing was recorded, retry",
                                      code="concurrent_change") from None
            raise
        await self.status_sync()  # the answer leaves only once no process can answer from before it
        return WindowResult(True, body)

    async def _replay(self, conn, client, req: WindowRequest) -> WindowResult:
        stored = await window_requests.get(conn, client_id=client.id, request_id=req.request_id)
        if stored is None or stored.action != req.action or stored.body_hash != req.body_hash():
            raise errors.Conflict("request_id was already used with a different body", field="request_id",
                                  code="idempotency_conflict")
        return WindowResult(False, stored.response)

    async def _targets(self, conn, client, req: WindowRequest, rhash: bytes | None) -> list[CertificateRecord]:
        """The certificates a request names (unlocked): one serial, or the resident's live ones of kinds;
        each within the client's authority (docs/domain.md, who may act on what)."""
        if req.serial is not None:
            cert = await cert_store.by_serial(conn, req.serial)
            if cert is None:
                raise errors.NotFound(f"no certificate with serial {serial_hex(req.serial)}", field="serial",
                                      code="unknown_serial")
            certs = [cert]
        else:
            certs = await cert_store.live_of_resident(conn, rhash, req.kinds)
            if not certs:
                raise errors.NotFound("the resident has no certificate of these kinds that is not revoked",
                                      field="resident_code", code="no_certificate")
        await check_scope(conn, client, req.action, certs)
        return certs

    async def _revoke(self, *, conn, client, operator_id, req, now, rhash, rule, invalidity) -> dict:
        targets = await self._targets(conn, client, req, rhash)
        primary = {c.id for c in targets}
        ids = set(primary)
        if any(lifecycle.cascades(c.kind) for c in targets):
            # Rule: the authentication certificate revoked => the signing certificate revoked too.
            for c in targets:
                if lifecycle.cascades(c.kind):
                    ids.update(s.id for s in await cert_store.live_of_resident(conn, c.resident_hash, (SIGNING,)))
        locked = await rev_store.lock_certificates(conn, ids)
        for cert in locked:
            if cert.id in primary and cert.status == "revoked":
                raise errors.Conflict(f"certificate {serial_hex(cert.serial)} is already revoked", field="serial",
                                      code="already_revoked")
        if rule.reason == Reason.key_compromise and invalidity is None:
            invalidity = now  # keyCompromise entries carry an invalidityDate (RFC 5280 5.3.2)
        done = []
        for cert in locked:
            if cert.status == "revoked":
                continue
            cascade = cert.id not in primary
            reason = lifecycle.cascade_reason(rule.reason) if cascade else rule.reason
            inv = None if cascade else invalidity
            await rev_store.apply_revocation(conn, cert, reason=int(reason), at=now, effective_at=now,
                                             source="window", source_ref=req.request_id, invalidity_date=inv,
                                             entry_der=encode_entry(cert.serial, now, reason, inv))
            await audit.record(conn, action="revoke", client_id=client.id, operator_id=operator_id,
                               serial=serial_bytes(cert.serial), request_id=req.request_id,
                               details={"reason": reason.name, "window_reason": req.reason, "kind": cert.kind,
                                        "cascade": cascade})
            done.append({"serial": serial_hex(cert.serial), "kind": cert.kind, "reason": reason.name,
                         "revoked_at": format_rfc3339(now), "invalidity_date": format_rfc3339(inv) if inv else None,
                         "cascade": cascade})
        if rule.free_reissue and done:
            residents = {c.resident_hash for c in locked}
            await rev_store.mark_free_reissue(conn, [(h, req.reason, req.request_id) for h in residents], at=now)
        return {"revoked": done, "free_reissue": bool(rule.free_reissue and done)}

    async def _hold(self, *, conn, client, operator_id, req, now, rhash) -> dict:
        targets = await self._targets(conn, client, req, rhash)
        locked = await rev_store.lock_certificates(conn, [c.id for c in targets])
        if req.serial is not None:
            cert = locked[0]
            if cert.status == "revoked":
                raise errors.Conflict(f"certificate {serial_hex(cert.serial)} is revoked", field="serial",
                                      code="already_revoked")
        todo = [c for c in locked if c.status == "valid"]
        if not todo:
            raise errors.Conflict("already on hold", field="serial" if req.serial else "resident_code",
                                  code="already_held")
        done = []
        for cert in todo:
            await rev_store.place_hold(conn, cert, at=now, source="hold", source_ref=req.request_id,
                                       entry_der=encode_entry(cert.serial, now, Reason.certificate_hold))
            await audit.record(conn, action="hold", client_id=client.id, operator_id=operator_id,
                               serial=serial_bytes(cert.serial), request_id=req.request_id, details={"kind": cert.kind})
            done.append({"serial": serial_hex(cert.serial), "kind": cert.kind, "held_at": format_rfc3339(now)})
        return {"held": done}

    async def _release(self, *, conn, client, operator_id, req, now, rhash) -> dict:
        targets = await self._targets(conn, client, req, rhash)
        for cert in targets:
            lifecycle.check_hold_release(cert.kind)
        locked = await rev_store.lock_certificates(conn, [c.id for c in targets])
        todo = [c for c in locked if c.status == "held"]
        if not todo:
            if req.serial is not None and locked[0].status == "revoked":
                raise errors.Conflict(f"certificate {serial_hex(locked[0].serial)} is revoked", field="serial",
                                      code="already_revoked")
            raise errors.Conflict("no hold to release", field="serial" if req.serial else "resident_code",
                                  code="not_held")
        done = []
        for cert in todo:
            await rev_store.release_hold(conn, cert, at=now)
            await audit.record(conn, action="hold_release", client_id=client.id, operator_id=operator_id,
                               serial=serial_bytes(cert.serial), request_id=req.request_id, details={"kind": cert.kind})
            done.append({"serial": serial_hex(cert.serial), "kind": cert.kind, "released_at": format_rfc3339(now)})
        return {"released": done}

