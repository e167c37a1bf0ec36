"""WindowService (the municipal window) built from a pool, a fixed clock and the resident-hash key."""
from __future__ import annotations

import datetime as dt

import pytest

from ca_core import errors
from ca_core.clock import format_rfc3339
from ca_core.serials import serial_hex
from revocation.service import WindowRequest
from tests.services.support import OPERATOR, issue_holder, request_id, revocation_rows, status, totals


def revoke(serial=None, reason="holder_request", *, resident_code=None, kinds=(), invalidity_date=None, rid=None):
    return WindowRequest(action="revoke", request_id=rid or request_id(), serial=serial, resident_code=resident_code,
                         kinds=kinds, reason=reason, invalidity_date=invalidity_date)


def hold(serial, rid=None):
    return WindowRequest(action="hold", request_id=rid or request_id(), serial=serial, resident_code=None, kinds=())


def release(serial, rid=None):
    return WindowRequest(action="release", request_id=rid or request_id(), serial=serial, resident_code=None,
                         kinds=())


@pytest.fixture
async def holder(issuance, parts):
    return await issue_holder(issuance, parts)


async def test_revoke_by_serial_for_key_compromise(window, parts, clock, holder):
    invalid_since = clock.now() - dt.timedelta(days=2)
    serial = holder.serial("signing")
    result = await window.handle(parts.terminal, OPERATOR, revoke(serial, "key_compromise",
                                                                  invalidity_date=invalid_since))
    assert result.created is True
    assert result.body["revoked"] == [{
        "serial": serial_hex(serial), "kind": "signing", "reason": "key_compromise",
        "revoked_at": format_rfc3339(clock.now()), "invalidity_date": format_rfc3339(invalid_since),
        "cascade": False}]
    assert result.body["free_reissue"] is False
    assert await status(parts, serial) == "revoked"
    rows = await revocation_rows(parts, serial)
    assert [(r["reason"], r["source"], r["invalidity_date"], r["revoked_at"], r["effective_at"]) for r in rows] == \
        [(1, "window", invalid_since, clock.now(), clock.now())]
    # a signing certificate does not cascade: the auth certificate stays valid
    assert await status(parts, holder.serial("auth")) == "valid"


async def test_key_compromise_without_a_date_is_invalid_since_now(window, parts, clock, holder):
    serial = holder.serial("signing")
    result = await window.handle(parts.terminal, OPERATOR, revoke(serial, "key_compromise"))
    assert result.body["revoked"][0]["invalidity_date"] == format_rfc3339(clock.now())
    assert (await revocation_rows(parts, serial))[0]["invalidity_date"] == clock.now()


async def test_invalidity_date_in_the_future_is_refused(window, parts, clock, holder):
    rows = await totals(parts)
    with pytest.raises(errors.PolicyViolation) as exc:
        await window.handle(parts.terminal, OPERATOR, revoke(holder.serial("signing"), "key_compromise",
                                                             invalidity_date=clock.now() + dt.timedelta(seconds=1)))
    assert exc.value.code == "invalid_invalidity_date"
    assert await totals(parts) == rows


async def test_revoking_twice_is_already_revoked_and_a_replay_answers_the_same(window, parts, holder):
    serial = holder.serial("signing")
    req = revoke(serial, "holder_request")
    first = await window.handle(parts.terminal, OPERATOR, req)
    rows = await totals(parts)
    again = await window.handle(parts.terminal, OPERATOR, req)  # same request_id, same body: a replay
    assert again.created is False and again.body == first.body
    with pytest.raises(errors.Conflict) as exc:
        await window.handle(parts.terminal, OPERATOR, revoke(serial, "holder_request"))
    assert exc.value.code == "already_revoked" and exc.value.field == "serial"
    assert await totals(parts) == rows
    assert len(await revocation_rows(parts, serial)) == 1


async def test_unknown_serial_is_not_found(window, parts):
    with pytest.raises(errors.NotFound) as exc:
        await window.handle(parts.terminal, OPERATOR, revoke(0x7123456789ABCDEF))
    assert exc.value.code == "unknown_serial"


async def test_hold_then_release_an_auth_certificate(window, parts, clock, holder):
    serial = holder.serial("auth")
    held = await window.handle(parts.terminal, OPERATOR, hold(serial))
    assert held.body["held"] == [{"serial": serial_hex(serial), "kind": "auth", "held_at": format_rfc3339(clock.now())}]
    assert await status(parts, serial) == "held"
    # a hold does not cascade to the signing certificate
    assert await status(parts, holder.serial("signing")) == "valid"
    with pytest.raises(errors.Conflict) as exc:
        await window.handle(parts.terminal, OPERATOR, hold(serial))
    assert exc.value.code == "already_held"

    clock.advance(hours=3)
    released = await window.handle(parts.terminal, OPERATOR, release(serial))
    assert released.body["released"] == [{"serial": serial_hex(serial), "kind": "auth",
                                          "released_at": format_rfc3339(clock.now())}]
    assert await status(parts, serial) == "valid"
    rows = await revocation_rows(parts, serial)
    assert [(r["reason"], r["source"], r["released_at"], r["release_kind"]) for r in rows] == \
        [(6, "hold", clock.now(), "hold_released")]
    with pytest.raises(errors.Conflict) as exc:
        await window.handle(parts.terminal, OPERATOR, release(serial))
    assert exc.value.code == "not_held"


async def test_a_signing_hold_cannot_be_released(window, parts, holder):
    serial = holder.serial("signing")
    await window.handle(parts.terminal, OPERATOR, hold(serial))
    rows = await totals(parts)
    with pytest.raises(errors.PolicyViolation) as exc:
        await window.handle(parts.terminal, OPERATOR, release(serial))
    assert exc.value.code == "signing_hold_not_releasable" and exc.value.message_ja
    assert await status(parts, serial) == "held"
    assert await totals(parts) == rows
    # it ends only in revocation
    await window.handle(parts.terminal, OPERATOR, revoke(serial, "holder_request"))
    assert await status(parts, serial) == "revoked"
    rows = await revocation_rows(parts, serial)
    assert [(r["reason"], r["release_kind"]) for r in rows] == [(6, "hold_revoked"), (5, None)]


async def test_revoking_auth_cascades_to_signing(window, parts, clock, holder):
    result = await window.handle(parts.terminal, OPERATOR, revoke(holder.serial("auth"), "key_compromise"))
    by_kind = {r["kind"]: r for r in result.body["revoked"]}
    assert set(by_kind) == {"signing", "auth"}
    assert (by_kind["auth"]["reason"], by_kind["auth"]["cascade"]) == ("key_compromise", False)
    # a compromised auth key says nothing about the signing key: cessationOfOperation, no invalidity date
    assert (by_kind["signing"]["reason"], by_kind["signing"]["cascade"], by_kind["signing"]["invalidity_date"]) == \
        ("cessation_of_operation", True, None)
    assert await status(parts, holder.serial("auth")) == "revoked"
    assert await status(parts, holder.serial("signing")) == "revoked"
    signing_rows = await revocation_rows(parts, holder.serial("signing"))
    assert [(r["reason"], r["invalidity_date"]) for r in signing_rows] == [(5, None)]


async def test_revoke_by_resident_code_revokes_the_kinds_named(window, parts, holder):
    result = await window.handle(parts.terminal, OPERATOR, revoke(resident_code=holder.code, kinds=("signing",),
                                                                  reason="recording_error"))
    assert [(r["kind"], r["reason"]) for r in result.body["revoked"]] == [("signing", "unspecified")]
    assert result.body["free_reissue"] is True
    assert await status(parts, holder.serial("signing")) == "revoked"
    assert await status(parts, holder.serial("auth")) == "valid"
