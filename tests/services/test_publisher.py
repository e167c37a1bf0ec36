"""Publisher built from a pool, the software token, a fixed clock, the CA generations, the profiles,
its settings and an output folder of the test's own."""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.x509.oid import CRLEntryExtensionOID

from crl_publisher.publisher import Target
from revocation.service import WindowRequest
from tests.services.support import OPERATOR, issue_holder, request_id


def _revoke(serial, reason="holder_request", invalidity_date=None):
    return WindowRequest(action="revoke", request_id=request_id(), serial=serial, resident_code=None, kinds=(),
                         reason=reason, invalidity_date=invalidity_date)


def _hold(serial):
    return WindowRequest(action="hold", request_id=request_id(), serial=serial, resident_code=None, kinds=())


async def _publish(publisher, parts, ca: str, kind: str) -> tuple[x509.CertificateRevocationList, object]:
    target = Target(parts.issuers.current(ca), "full", kind)
    outcome = await publisher.publish(target)
    assert outcome.published is not None, outcome.skipped
    crl = x509.load_der_x509_crl((publisher.out / target.path).read_bytes())
    return crl, outcome.published


async def _listed_by_database(parts, ca: str, at: dt.datetime) -> set[int]:
    """What the certificate table says a complete CRL must list: the CA generation's revoked or held
    certificates that have not expired."""
    async with parts.pool.acquire() as conn:
        rows = await conn.fetch("SELECT serial FROM certificate WHERE ca_generation_id = $1"
                                " AND status IN ('revoked', 'held') AND not_after >= $2",
                                parts.issuers.current(ca).db_id, at)
    return {int.from_bytes(r["serial"], "big") for r in rows}


async def _after_the_last_crl(parts, clock) -> None:
    """The services' database is shared by the tests, each with its clock at T0; CRL dates never go
    back, so a test that checks thisUpdate starts after every CRL published before it."""
    async with parts.pool.acquire() as conn:
        last = await conn.fetchval("SELECT max(this_update) FROM crl")
    if last is not None and last >= clock.now():
        clock.at = last + dt.timedelta(minutes=1)


def _reasons(crl) -> dict[int, x509.ReasonFlags | None]:
    out = {}
    for entry in crl:
        try:
            out[entry.serial_number] = entry.extensions.get_extension_for_oid(CRLEntryExtensionOID.CRL_REASON).value.reason
        except x509.ExtensionNotFound:
            out[entry.serial_number] = None
    return out


async def test_full_crl_lists_exactly_the_revoked_serials_and_verifies(publisher, issuance, window, parts, clock):
    await _after_the_last_crl(parts, clock)
    a, b, c = [await issue_holder(issuance, parts) for _ in range(3)]
    invalid_since = clock.now() - dt.timedelta(days=1)
    await window.handle(parts.terminal, OPERATOR, _revoke(a.serial("signing"), "key_compromise", invalid_since))
    await window.handle(parts.terminal, OPERATOR, _revoke(b.serial("auth"), "holder_request"))  # cascades
    await window.handle(parts.terminal, OPERATOR, _hold(c.serial("auth")))
    clock.advance(minutes=10)
    signatures = parts.signer.signatures

    published = {}
    for ca in ("signing", "auth"):
        crl, record = await _publish(publisher, parts, ca, "base")
        published[ca] = crl
        ca_cert = parts.ca(ca)
        assert crl.is_signature_valid(ca_cert.public_key())
        assert not crl.is_signature_valid(parts.ca("auth" if ca == "signing" else "signing").public_key())
        assert crl.issuer == ca_cert.subject
        assert crl.last_update_utc == clock.now()
        assert crl.next_update_utc == clock.now() + dt.timedelta(minutes=parts.cfg.crl.full_validity_minutes)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        assert number == record.number
        serials = {e.serial_number for e in crl}
        assert len(serials) == len(crl) == record.entries
        assert serials == await _listed_by_database(parts, ca, clock.now())
    assert parts.signer.signatures == signatures + 2  # one token signature per CRL

    signing, auth = _reasons(published["signing"]), _reasons(published["auth"])
    assert signing[a.serial("signing")] == x509.ReasonFlags.key_compromise
    entry = published["signing"].get_revoked_certificate_by_serial_number(a.serial("signing"))
    assert entry.revocation_date_utc == clock.now() - dt.timedelta(minutes=10)
    assert entry.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc == invalid_since
    assert signing[b.serial("signing")] == x509.ReasonFlags.cessation_of_operation
    assert auth[b.serial("auth")] == x509.ReasonFlags.cessation_of_operation
    assert auth[c.serial("auth")] == x509.ReasonFlags.certificate_hold
    for valid in (c.serial("signing"), a.serial("auth")):
        assert valid not in signing and valid not in auth


async def test_delta_after_one_more_revocation_lists_exactly_that_serial(publisher, issuance, window, parts, clock):
    await _after_the_last_crl(parts, clock)
    holder = await issue_holder(issuance, parts)
    for ca in ("signing", "auth"):
        _base_crl, base = await _publish(publisher, parts, ca, "base")
        if ca == "signing":
            signing_base = base
    clock.advance(minutes=15)
    await window.handle(parts.terminal, OPERATOR, _revoke(holder.serial("signing"), "holder_request"))
    clock.advance(minutes=1)

    delta, record = await _publish(publisher, parts, "signing", "delta")
    assert delta.is_signature_valid(parts.ca("signing").public_key())
    assert [e.serial_number for e in delta] == [holder.serial("signing")]
    assert _reasons(delta)[holder.serial("signing")] == x509.ReasonFlags.cessation_of_operation
    assert delta.last_update_utc == clock.now()
    indicator = delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
    assert indicator == signing_base.number
    assert record.number > signing_base.number and record.base_id == signing_base.id

    # the auth CA's delta has nothing: the revocation concerned only the signing CA
    auth_delta, _ = await _publish(publisher, parts, "auth", "delta")
    assert auth_delta.is_signature_valid(parts.ca("auth").public_key())
    assert len(auth_delta) == 0



async def test_a_clock_stepped_back_never_dates_a_crl_before_the_last(publisher, parts, clock):
    first, rec1 = await _publish(publisher, parts, "auth", "base")
    clock.advance(hours=-1)  # an NTP correction steps the host clock back
    second, rec2 = await _publish(publisher, parts, "auth", "base")
    assert rec2.number > rec1.number
    assert second.last_update_utc == first.last_update_utc  # not before it
    delta, _ = await _publish(publisher, parts, "auth", "delta")
    assert delta.last_update_utc >= second.last_update_utc
