"""Pending online revocations become effective with crl_publisher.publisher.activate_pending (CRL publisher)."""
from __future__ import annotations

from ca_core.revocation import Reason, encode_entry
from crl_publisher.publisher import activate_pending
from storage import certificates, revocations
from tests.helpers import certs_by_kind, issue, issue_body


async def _status(rt, serial):
    async with rt.pool.acquire() as conn:
        return await conn.fetchval("SELECT status FROM certificate WHERE serial = $1", serial.to_bytes(16, "big"))


async def test_activate_pending_makes_revocations_effective_and_ends_hold(http, terminal, keys, rt):
    certs = certs_by_kind(await issue(http, terminal, issue_body(keys)))
    sig, auth = certs["signing"].serial_number, certs["auth"].serial_number
    now = rt.clock.now()
    async with rt.pool.acquire() as conn, conn.transaction():
        a = await certificates.by_serial(conn, auth, for_update=True)
        s = await certificates.by_serial(conn, sig, for_update=True)
        await revocations.place_hold(conn, s, at=now, entry_der=encode_entry(s.serial, now, Reason.certificate_hold))
        for c in (a, s):
            await revocations.accept_pending(conn, c, reason=5, at=now, source="online", source_ref="t1")
    assert await _status(rt, auth) == "valid" and await _status(rt, sig) == "held"
    async with rt.pool.acquire() as conn, conn.transaction():
        n = await activate_pending(conn, now)
        assert n >= 2
        rows = await conn.fetch(
            "SELECT serial, reason, effective_at, released_at, release_kind FROM revocation"
            " WHERE serial = ANY($1::bytea[]) ORDER BY id", [sig.to_bytes(16, "big"), auth.to_bytes(16, "big")])
    assert await _status(rt, auth) == "revoked" and await _status(rt, sig) == "revoked"
    hold = [r for r in rows if r["reason"] == 6]
    assert len(hold) == 1 and hold[0]["release_kind"] == "hold_revoked"
    live = [r for r in rows if r["released_at"] is None]
    assert len(live) == 2 and all(r["effective_at"] == now and r["reason"] == 5 for r in live)
    async with rt.pool.acquire() as conn, conn.transaction():
        assert await conn.fetchval("SELECT count(*) FROM revocation WHERE effective_at IS NULL AND released_at IS NULL"
                                   " AND serial = ANY($1::bytea[])",
                                   [sig.to_bytes(16, "big"), auth.to_bytes(16, "big")]) == 0
