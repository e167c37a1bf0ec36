"""IssuanceService built from its parts: a software token, a fixed clock, the CA generations made by the
ceremony code and a database of its own."""
from __future__ import annotations

import datetime as dt
import secrets

import pytest
from cryptography import x509

from ca_core import errors
from ca_core.clock import JST
from ca_core.resident import BasicFour, era_of
from tests.helpers import resident
from tests.services.support import (OPERATOR, T0, issue_holder, issue_request, record, revocation_rows, status,
                                    totals)

# resident() is born 1985-04-12; at T0 (2026-11-22 in Japan) the 5th birthday after issuance is 2031-04-12.
FIFTH_BIRTHDAY_END = dt.datetime(2031, 4, 12, 23, 59, 59, tzinfo=JST)


async def test_issues_a_signing_and_auth_pair_signed_by_the_software_cas(issuance, parts, clock):
    before = parts.signer.signatures
    holder = await issue_holder(issuance, parts)
    assert holder.result.created is True
    assert [c.kind for c in holder.result.certificates] == ["signing", "auth"]
    assert parts.signer.signatures - before == 2
    for issued in holder.result.certificates:
        cert = x509.load_der_x509_certificate(issued.der)
        cert.verify_directly_issued_by(parts.ca(issued.kind))
        assert cert.serial_number == issued.serial
        assert cert.not_valid_before_utc == clock.now() == T0
        assert cert.not_valid_after_utc == FIFTH_BIRTHDAY_END
        assert issued.not_after == FIFTH_BIRTHDAY_END
        pub = cert.public_key().public_numbers()
        assert pub == holder.keys[issued.kind].public_key().public_numbers()
        stored = await record(parts, issued.serial)
        assert (stored.kind, stored.status, stored.der) == (issued.kind, "valid", issued.der)
    # the two CAs are distinct: the auth certificate does not verify under the signing CA
    with pytest.raises(Exception):
        holder.certs["auth"].verify_directly_issued_by(parts.ca("signing"))


async def test_card_expiry_before_the_fifth_birthday_caps_not_after(issuance, parts):
    holder = await issue_holder(issuance, parts, card_expires_on="2029-06-30")
    for cert in holder.certs.values():
        assert cert.not_valid_after_utc == dt.datetime(2029, 6, 30, 23, 59, 59, tzinfo=JST)


async def test_fifth_birthday_counts_from_the_japanese_date(issuance, parts, clock):
    # 23:30 UTC on 11 April is already 12 April (the birthday) in Japan: the birthday of that day is not
    # "after issuance", so the fifth one is five years on.
    clock.at = dt.datetime(2027, 4, 11, 23, 30, tzinfo=dt.timezone.utc)
    holder = await issue_holder(issuance, parts, kinds=("auth",))
    assert holder.certs["auth"].not_valid_after_utc == dt.datetime(2032, 4, 12, 23, 59, 59, tzinfo=JST)
    assert holder.certs["auth"].not_valid_before_utc == clock.now()


async def test_replay_returns_the_same_certificates_without_signing(issuance, parts):
    keys = {k: parts.card_keys.next() for k in ("signing", "auth")}
    req = issue_request(keys)
    first = await issuance.issue(parts.terminal, OPERATOR, req)
    signatures, rows = parts.signer.signatures, await totals(parts)
    again = await issuance.issue(parts.terminal, OPERATOR, req)
    assert again.created is False
    assert [(c.kind, c.serial, c.der) for c in again.certificates] == \
        [(c.kind, c.serial, c.der) for c in first.certificates]
    assert parts.signer.signatures == signatures
    assert await totals(parts) == rows


async def test_same_request_id_with_another_body_is_refused(issuance, parts):
    keys = {"auth": parts.card_keys.next()}
    req = issue_request(keys)
    await issuance.issue(parts.terminal, OPERATOR, req)
    signatures, rows = parts.signer.signatures, await totals(parts)
    other = issue_request(keys, request_id_=req.request_id, code=req.resident_code, card_expires_on="2030-01-01")
    with pytest.raises(errors.Conflict) as exc:
        await issuance.issue(parts.terminal, OPERATOR, other)
    assert exc.value.code == "idempotency_conflict"
    assert parts.signer.signatures == signatures and await totals(parts) == rows


async def test_renewal_opens_92_days_before_expiry_and_supersedes(issuance, parts, clock):
    expiry_day = (clock.now().astimezone(JST).date() + dt.timedelta(days=120))
    first = await issue_holder(issuance, parts, kinds=("auth",), card_expires_on=expiry_day.isoformat())
    not_after = first.certs["auth"].not_valid_after_utc
    assert not_after == dt.datetime.combine(expiry_day, dt.time(23, 59, 59), JST)

    # one second before the window opens: refused before any signature, nothing recorded
    clock.at = not_after - dt.timedelta(days=92, seconds=1)
    signatures, rows = parts.signer.signatures, await totals(parts)
    with pytest.raises(errors.Conflict) as exc:
        await issue_holder(issuance, parts, kinds=("auth",), code=first.code,
                           card_expires_on=expiry_day.isoformat())
    assert exc.value.code == "renewal_too_early"
    assert parts.signer.signatures == signatures and await totals(parts) == rows

    # exactly 92 days before expiry: a new certificate, the old one superseded
    clock.at = not_after - dt.timedelta(days=92)
    renewed = await issue_holder(issuance, parts, kinds=("auth",), code=first.code,
                                 card_expires_on=expiry_day.isoformat())
    assert parts.signer.signatures == signatures + 1
    new_cert = renewed.certs["auth"]
    assert new_cert.serial_number != first.serial("auth")
    assert new_cert.not_valid_before_utc == clock.now()
    assert await status(parts, first.serial("auth")) == "revoked"
    assert await status(parts, new_cert.serial_number) == "valid"
    rows = await revocation_rows(parts, first.serial("auth"))
    assert [(r["reason"], r["source"], r["revoked_at"], r["effective_at"]) for r in rows] == \
        [(4, "supersede", clock.now(), clock.now())]


async def test_card_replaced_supersedes_only_the_kinds_reissued(issuance, parts):
    first = await issue_holder(issuance, parts)
    second = await issue_holder(issuance, parts, kinds=("signing",), code=first.code, card_replaced=True)
    assert await status(parts, first.serial("signing")) == "revoked"
    assert await status(parts, first.serial("auth")) == "valid"
    assert await status(parts, second.serial("signing")) == "valid"


@pytest.mark.parametrize("kinds", [("signing", "auth"), ("auth",)])
async def test_token_failure_raises_hsm_error_and_records_nothing(issuance, parts, kinds):
    signatures, rows = parts.signer.signatures, await totals(parts)
    parts.signer.fail_next = True
    keys = {k: parts.card_keys.next() for k in kinds}
    req = issue_request(keys)
    with pytest.raises(errors.HSMError) as exc:
        await issuance.issue(parts.terminal, OPERATOR, req)
    assert isinstance(exc.value, errors.Unavailable) and exc.value.code == "hsm_unavailable"
    assert parts.signer.fail_next is False
    assert parts.signer.signatures == signatures
    assert await totals(parts) == rows
    # the same request succeeds once the token is back (the request id was not consumed)
    result = await issuance.issue(parts.terminal, OPERATOR, req)
    assert result.created and len(result.certificates) == len(kinds)


async def test_token_failure_on_the_second_signature_records_nothing(parts, clock, profiles):
    """The signing certificate was signed, the auth one failed: neither is recorded nor returned."""
    from ca_core.ca import FixedIssuers
    from issuance.service import IssuanceService

    class FailsSecond:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        async def sign(self, label, alg, tbs):
            self.calls += 1
            if self.calls == 2:
                self.inner.fail_next = True
            return await self.inner.sign(label, alg, tbs)

    signer = FailsSecond(parts.signer)
    svc = IssuanceService(pool=parts.pool, signer=signer, clock=clock, issuers=FixedIssuers(parts.issuers),
                          profiles=profiles, settings=parts.cfg.issuance, resident_key=parts.resident_key)
    rows = await totals(parts)
    with pytest.raises(errors.HSMError):
        await issue_holder(svc, parts)
    assert signer.calls == 2
    assert await totals(parts) == rows


async def test_renewal_that_fails_at_the_token_leaves_the_old_certificate_valid(issuance, parts):
    first = await issue_holder(issuance, parts, kinds=("auth",))
    parts.signer.fail_next = True
    with pytest.raises(errors.HSMError):
        await issue_holder(issuance, parts, kinds=("auth",), code=first.code, card_replaced=True)
    assert await status(parts, first.serial("auth")) == "valid"
    assert await revocation_rows(parts, first.serial("auth")) == []


def _under_15():
    born = (T0 - dt.timedelta(days=365 * 10)).date()
    return dict(resident=BasicFour(**resident(birth_date=f"{era_of(born)}{born:%Y%m%d}")))


@pytest.mark.parametrize("case,error,code", [
    ("other_municipality", errors.Forbidden, "municipality_mismatch"),
    ("under_15", errors.PolicyViolation, "applicant_under_15"),
    ("same_key", errors.InvalidRequest, "duplicate_key"),
    ("card_expired", errors.PolicyViolation, "card_expired"),
    ("unknown_municipality", errors.PolicyViolation, "unknown_municipality"),
])
async def test_rejections_sign_nothing_and_record_nothing(issuance, parts, case, error, code):
    from storage import clients

    keys = {k: parts.card_keys.next() for k in ("signing", "auth")}
    client = parts.terminal
    over = {}
    if case == "other_municipality":
        over = dict(municipality_code="271004")
    elif case == "under_15":
        over = _under_15()
    elif case == "same_key":
        keys["auth"] = keys["signing"]
    elif case == "card_expired":
        over = dict(card_expires_on=(T0 - dt.timedelta(days=2)).date().isoformat())
    elif case == "unknown_municipality":
        # Hachioji-shi: a well-formed code (valid check digit) that the migrations do not register, and
        # a terminal of it
        over = dict(municipality_code="132012")
        async with parts.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM municipality WHERE code = '132012'") == 0
            client = await clients.register(conn, kind="terminal", name=f"svc-terminal-{secrets.token_hex(4)}",
                                               municipality_code="132012")
    req = issue_request(keys, **over)
    signatures, rows = parts.signer.signatures, await totals(parts)
    with pytest.raises(error) as exc:
        await issuance.issue(client, OPERATOR, req)
    assert exc.value.code == code
    assert parts.signer.signatures == signatures
    assert await totals(parts) == rows
