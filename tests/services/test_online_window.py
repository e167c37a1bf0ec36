"""OnlineWindow built from a pool, a fixed clock, the CA generations and the revocation settings; the
applications are CMS SignedData made with revocation/online_client.py and the card's key."""
from __future__ import annotations

import datetime as dt

import pytest

from ca_core import errors
from ca_core.clock import format_rfc3339
from ca_core.serials import serial_hex
from crl_publisher.publisher import Target
from revocation import online_client
from tests.services.support import APPLICANT, issue_holder, revocation_rows, status, totals


def application(holder, kind: str, procedure: str, clock, **kw) -> bytes:
    kw.setdefault("issued_at", clock.now())
    return online_client.build(procedure, holder.der(kind), online_client.key_signer(holder.keys[kind]),
                               APPLICANT, **kw)


@pytest.fixture
async def holder(issuance, parts, clock):
    issued = await issue_holder(issuance, parts)
    clock.advance(minutes=30)
    return issued


async def test_validity_check_of_a_valid_certificate(online, parts, clock, holder):
    for kind in ("signing", "auth"):
        answer = await online.handle("validity_check", application(holder, kind, "validity_check", clock))
        assert answer == {"result": "valid", "serial": serial_hex(holder.serial(kind)), "kind": kind,
                          "checked_at": format_rfc3339(clock.now())}


async def test_accepted_revocation_is_pending_until_the_publisher_activates_it(online, publisher, parts, clock,
                                                                               holder):
    serial = holder.serial("signing")
    answer = await online.handle("revocation", application(holder, "signing", "revocation", clock))
    assert answer["status"] == "accepted" and answer["serial"] == serial_hex(serial)
    assert answer["accepted_at"] == format_rfc3339(clock.now())
    assert answer["certificates"] == [{"serial": serial_hex(serial), "kind": "signing"}]
    # accepted, not effective: the certificate is still valid, the row waits without effective_at
    assert await status(parts, serial) == "valid"
    rows = await revocation_rows(parts, serial)
    assert [(r["reason"], r["source"], r["effective_at"], r["released_at"]) for r in rows] == \
        [(5, "online", None, None)]
    check = await online.handle("validity_check", application(holder, "signing", "validity_check", clock))
    assert check["result"] == "revocation_accepted"
    with pytest.raises(errors.Conflict) as exc:
        await online.handle("revocation", application(holder, "signing", "revocation", clock))
    assert exc.value.code == "already_requested"

    # the next CRL issuance makes it effective
    clock.advance(minutes=15)
    outcome = await publisher.publish(Target(parts.issuers.current("signing"), "full", "base"))
    assert outcome.published is not None
    assert await status(parts, serial) == "revoked"
    assert (await revocation_rows(parts, serial))[0]["effective_at"] == clock.now()
    check = await online.handle("validity_check", application(holder, "signing", "validity_check", clock))
    assert check["result"] == "revoked"
    with pytest.raises(errors.Conflict) as exc:
        await online.handle("revocation", application(holder, "signing", "revocation", clock))
    assert exc.value.code == "already_revoked"
    assert await status(parts, holder.serial("auth")) == "valid"


async def test_auth_revocation_accepts_the_signing_certificate_too(online, parts, clock, holder):
    answer = await online.handle("revocation", application(holder, "auth", "revocation", clock))
    assert answer["status"] == "accepted"
    assert sorted(c["kind"] for c in answer["certificates"]) == ["auth", "signing"]
    for kind in ("signing", "auth"):
        assert [(r["source"], r["effective_at"]) for r in await revocation_rows(parts, holder.serial(kind))] == \
            [("online", None)]


async def test_a_replayed_application_is_refused(online, parts, clock, holder):
    body = application(holder, "auth", "validity_check", clock)
    await online.handle("validity_check", body)
    with pytest.raises(errors.Conflict) as exc:
        await online.handle("validity_check", body)
    assert exc.value.code == "replayed"


async def test_stale_and_wrongly_signed_applications_record_nothing(online, parts, clock, holder):
    rows = await totals(parts)
    stale = application(holder, "auth", "revocation", clock, issued_at=clock.now() - dt.timedelta(minutes=11))
    with pytest.raises(errors.PolicyViolation) as exc:
        await online.handle("revocation", stale)
    assert exc.value.code == "stale"
    other_key = online_client.key_signer(holder.keys["signing"])  # not the key of the auth certificate
    forged = online_client.build("revocation", holder.der("auth"), other_key, APPLICANT, issued_at=clock.now())
    with pytest.raises(errors.PolicyViolation) as exc:
        await online.handle("revocation", forged)
    assert exc.value.code == "application_signature_invalid"
    assert await totals(parts) == rows
    assert await status(parts, holder.serial("auth")) == "valid"
