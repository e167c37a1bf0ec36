"""The revocation rules table (docs/domain.md, revocation rules) and the fast CRL entry encoder."""
from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import crl as acrl

from ca_core import lifecycle
from ca_core.errors import PolicyViolation
from ca_core.revocation import Reason, encode_entry

UTC = dt.timezone.utc


@pytest.mark.parametrize("kind", ["moved", "name_changed", "birth_date_corrected", "sex_corrected"])
def test_basic4_change_revokes_signing_affiliation_changed(kind):
    rule = lifecycle.FEED_RULES[kind]
    assert rule.revokes == ("signing",) and rule.reason == Reason.affiliation_changed and not rule.free_reissue


def test_address_notation_change_revokes_signing_and_reissue_is_free():
    rule = lifecycle.FEED_RULES["address_notation_changed"]
    assert rule.revokes == ("signing",) and rule.reason == Reason.affiliation_changed and rule.free_reissue


def test_municipal_merger_revokes_nothing():
    rule = lifecycle.FEED_RULES["municipal_merger"]
    assert rule.revokes == () and rule.free_reissue


@pytest.mark.parametrize("kind", ["died", "emigrated", "record_deleted"])
def test_end_of_residence_revokes_both_cessation(kind):
    rule = lifecycle.FEED_RULES[kind]
    assert set(rule.revokes) == {"signing", "auth"} and rule.reason == Reason.cessation_of_operation


def test_window_reasons():
    assert lifecycle.window_rule("holder_request").reason == Reason.cessation_of_operation
    assert lifecycle.window_rule("key_compromise").with_invalidity_date
    assert lifecycle.window_rule("recording_error").reason == Reason.unspecified
    assert lifecycle.window_rule("recording_error").free_reissue
    with pytest.raises(PolicyViolation) as exc:
        lifecycle.window_rule("bored")
    assert exc.value.code == "invalid_reason"


def test_auth_revocation_cascades_to_signing_not_the_other_way():
    assert lifecycle.cascades("auth") and not lifecycle.cascades("signing")
    assert lifecycle.cascade_reason(Reason.key_compromise) == Reason.cessation_of_operation
    assert lifecycle.cascade_reason(Reason.cessation_of_operation) == Reason.cessation_of_operation


def test_signing_hold_cannot_be_released():
    lifecycle.check_hold_release("auth")
    with pytest.raises(PolicyViolation) as exc:
        lifecycle.check_hold_release("signing")
    assert exc.value.code == "signing_hold_not_releasable" and exc.value.message_ja


def test_invalidity_date_not_in_future_and_aware():
    now = dt.datetime(2025, 1, 1, tzinfo=UTC)
    assert lifecycle.check_invalidity_date(now - dt.timedelta(days=1, microseconds=5), now) == now - dt.timedelta(days=1, seconds=1)
    for bad in (now + dt.timedelta(seconds=1), dt.datetime(2024, 1, 1)):
        with pytest.raises(PolicyViolation):
            lifecycle.check_invalidity_date(bad, now)


def _reference_entry(serial, at, reason, invalidity=None) -> bytes:
    """The same entry built as an asn1crypto object tree (the slow, obvious way)."""
    from asn1crypto import x509 as ax509
    exts = []
    if reason != Reason.unspecified:
        exts.append({"extn_id": "crl_reason", "critical": False, "extn_value": acrl.CRLReason(int(reason))})
    if invalidity is not None:
        exts.append({"extn_id": "invalidity_date", "critical": False,
                     "extn_value": ax509.GeneralizedTime(invalidity.astimezone(UTC))})
    time = ax509.Time(name="utc_time" if at.astimezone(UTC).year < 2050 else "general_time", value=at.astimezone(UTC))
    entry = {"user_certificate": serial, "revocation_date": time}
    if exts:
        entry["crl_entry_extensions"] = exts
    return acrl.RevokedCertificate(entry).dump()


@pytest.mark.parametrize("reason", [r for r in Reason if r != Reason.remove_from_crl])
@pytest.mark.parametrize("serial", [1, 127, 128, 255, 2**63, 2**126 + 12345, 2**127 - 1, 2**159])
@pytest.mark.parametrize("at", [dt.datetime(2025, 6, 1, 12, 30, 5, tzinfo=UTC), dt.datetime(2050, 1, 1, tzinfo=UTC),
                                dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=9)))])
def test_entry_encoding_equals_asn1crypto(reason, serial, at):
    invalidity = at - dt.timedelta(days=2) if reason == Reason.key_compromise else None
    der = encode_entry(serial, at, reason, invalidity)
    assert der == _reference_entry(serial, at, reason, invalidity)
    entry = acrl.RevokedCertificate.load(der, strict=True)
    assert entry["user_certificate"].native == serial
    assert entry["revocation_date"].native == at.astimezone(UTC)


@pytest.mark.parametrize("text", ["0132-01-01T00:00:00Z", "1949-12-31T23:59:59Z", "0001-01-01T00:00:00+09:00"])
def test_invalidity_dates_before_1950_are_refused(text):
    import datetime as dt

    from ca_core import lifecycle
    from ca_core.errors import PolicyViolation

    with pytest.raises(PolicyViolation) as exc:
        lifecycle.check_invalidity_date(dt.datetime.fromisoformat(text.replace("Z", "+00:00")),
                                        dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc))
    assert exc.value.code == "invalid_invalidity_date"
