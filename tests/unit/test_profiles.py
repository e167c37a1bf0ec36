"""Certificate profiles (docs/domain.md, the two certificate profiles), checked with cryptography's strict
parser."""
from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from ca_core import config
from ca_core.clock import JST, UTC
from ca_core.profiles import (CertificateProfile, CertificateTemplate, assemble_certificate, end_entity_subject,
                              responder_tbs, validity)
from ca_core.resident import BasicFour
from tests.unit.conftest import NOW, software_sign

CFG = config.load(env={})
INFO = BasicFour(name="山田　太郎", name_substitutes="00000", address="東京都千代田区千代田１番１号",
                 address_substitutes="00000000000000", birth_date="319800515", sex="1")


def _spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _kid(key) -> bytes:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest


def _sign(profile, issuer, key, **fields):
    fields.setdefault("key_id", _kid(fields["ee_key"]))
    ee = fields.pop("ee_key")
    tbs = CertificateTemplate(profile, issuer).tbs(spki_der=_spki(ee), **fields)
    return x509.load_der_x509_certificate(assemble_certificate(tbs, issuer.algorithm,
                                                               software_sign(key, issuer.algorithm, tbs)))


def _issue(kind, issuer_and_key, ee_key, **over):
    issuer, key = issuer_and_key
    profile = CertificateProfile.from_config(CFG, kind)
    nb, na = validity(NOW, dt.date(1980, 5, 15), dt.date(2034, 1, 1))
    subject = end_entity_subject(kind, "Tokyo-to", "Chiyoda-ku", "ABCDEF0123")
    cert = _sign(profile, issuer, key, serial=0x1234567890ABCDEF1234567890ABCDEF, ee_key=ee_key, subject_der=subject,
                 basic4=INFO if kind == "signing" else None, not_before=nb, not_after=na, partition="g1-p7", **over)
    return cert, issuer


def _ca(issuer):
    return x509.load_der_x509_certificate(issuer.certificate_der)


def test_signing_certificate_profile(signing_issuer, ee_key):
    cert, issuer = _issue("signing", signing_issuer, ee_key)
    cert.verify_directly_issued_by(_ca(issuer))
    assert cert.version == x509.Version.v3
    assert cert.subject.rfc4514_string() == "CN=ABCDEF0123,L=Chiyoda-ku,L=Tokyo-to,C=JP"
    assert cert.issuer == _ca(issuer).subject
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.11"
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.content_commitment
    assert not ku.value.key_encipherment and not ku.value.key_cert_sign
    pol = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
    assert pol.critical
    assert [p.policy_identifier.dotted_string for p in pol.value] == ["1.2.392.200149.8.5.1.0.20"]
    assert pol.value[0].policy_qualifiers == [CFG.ca.signing.cps_uri]


def test_signing_certificate_carries_six_utf8_other_names(signing_issuer, ee_key):
    cert, _ = _issue("signing", signing_issuer, ee_key)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    others = san.value.get_values_for_type(x509.OtherName)
    got = {o.type_id.dotted_string: o.value for o in others}
    expected = {"1.2.392.200149.8.5.5.1": INFO.name, "1.2.392.200149.8.5.5.2": INFO.name_substitutes,
                "1.2.392.200149.8.5.5.3": INFO.sex, "1.2.392.200149.8.5.5.4": INFO.birth_date,
                "1.2.392.200149.8.5.5.5": INFO.address, "1.2.392.200149.8.5.5.6": INFO.address_substitutes}
    assert set(got) == set(expected) and len(others) == 6
    for oid, value in got.items():
        parsed = core.UTF8String.load(value)  # each value is a UTF8String
        assert parsed.native == expected[oid]


def test_auth_certificate_profile_has_no_personal_data(auth_issuer, ee_key):
    cert, issuer = _issue("auth", auth_issuer, ee_key)
    cert.verify_directly_issued_by(_ca(issuer))
    assert cert.subject.rfc4514_string() == "CN=ABCDEF0123,C=JP"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.content_commitment
    pol = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
    assert pol.critical and pol.value[0].policy_identifier.dotted_string == "1.2.392.200149.8.5.1.3.30"


@pytest.mark.parametrize("kind", ["signing", "auth"])
def test_common_extensions(kind, signing_issuer, auth_issuer, ee_key):
    cert, issuer = _issue(kind, signing_issuer if kind == "signing" else auth_issuer, ee_key)
    exts = {e.oid: e for e in cert.extensions}
    aki = exts[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value
    assert aki.key_identifier == issuer.key_id
    ski = exts[ExtensionOID.SUBJECT_KEY_IDENTIFIER].value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(ee_key.public_key()).digest
    ian = exts[ExtensionOID.ISSUER_ALTERNATIVE_NAME].value
    assert ian.get_values_for_type(x509.DirectoryName)[0].get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value \
        == "公的個人認証サービス"
    cdp = exts[ExtensionOID.CRL_DISTRIBUTION_POINTS].value
    assert cdp[0].full_name[0].value == f"http://127.0.0.1:8080/crl/{kind}/g1-p7.crl"
    fresh = exts[ExtensionOID.FRESHEST_CRL].value
    assert fresh[0].full_name[0].value == f"http://127.0.0.1:8080/crl/{kind}/g1-p7-delta.crl"
    aia = exts[ExtensionOID.AUTHORITY_INFORMATION_ACCESS]
    assert not aia.critical
    assert [(d.access_method, d.access_location.value) for d in aia.value] == [
        (AuthorityInformationAccessOID.OCSP, "http://127.0.0.1:8080/ocsp"),
        (AuthorityInformationAccessOID.CA_ISSUERS, f"http://127.0.0.1:8080/ca/{kind}/{issuer.key_id.hex()}.crt")]
    assert ExtensionOID.BASIC_CONSTRAINTS not in exts
    assert cert.serial_number == 0x1234567890ABCDEF1234567890ABCDEF
    # exactly the profile's extensions, in the profile's order (docs/domain.md)
    order = [ExtensionOID.KEY_USAGE, ExtensionOID.CERTIFICATE_POLICIES] + (
        [ExtensionOID.SUBJECT_ALTERNATIVE_NAME] if kind == "signing" else []) + [
        ExtensionOID.ISSUER_ALTERNATIVE_NAME, ExtensionOID.CRL_DISTRIBUTION_POINTS, ExtensionOID.FRESHEST_CRL,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER]
    assert [e.oid for e in cert.extensions] == order


def test_ocsp_can_be_left_out_of_aia(auth_issuer, ee_key):
    issuer, key = auth_issuer
    profile = CertificateProfile.from_config(CFG.replace(issuance=CFG.issuance.replace(ocsp_in_aia=False)), "auth")
    cert = _sign(profile, issuer, key, serial=6, ee_key=ee_key, subject_der=end_entity_subject("auth", None, None, "X"),
                 basic4=None, not_before=NOW, not_after=NOW + dt.timedelta(days=1), partition="g1-p0")
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_method for d in aia] == [AuthorityInformationAccessOID.CA_ISSUERS]


def test_validity_is_capped_at_the_ca_certificate():
    ca_end = NOW + dt.timedelta(days=400)
    nb, na = validity(NOW, dt.date(1980, 5, 15), dt.date(2034, 1, 1), ca_end)
    assert (nb, na) == (NOW, ca_end)
    _nb, uncapped = validity(NOW, dt.date(1980, 5, 15), dt.date(2034, 1, 1), NOW + dt.timedelta(days=20 * 365))
    assert uncapped < NOW + dt.timedelta(days=20 * 365) and uncapped == validity(NOW, dt.date(1980, 5, 15),
                                                                               dt.date(2034, 1, 1))[1]


def test_no_freshest_crl_when_deltas_are_off(signing_issuer, ee_key):
    issuer, key = signing_issuer
    cfg = CFG.replace(issuance=config.IssuanceConfig(publish_deltas=False))
    profile = CertificateProfile.from_config(cfg, "auth")
    cert = _sign(profile, issuer, key, serial=5, ee_key=ee_key, subject_der=end_entity_subject("auth", None, None, "X"),
                 basic4=None, not_before=NOW, not_after=NOW + dt.timedelta(days=1), partition="g1-p0")
    assert ExtensionOID.FRESHEST_CRL not in {e.oid for e in cert.extensions}


def test_ecdsa_ca_signs_verifiable_certificates(ec_issuer, ee_key):
    cert, issuer = _issue("auth", ec_issuer, ee_key)
    cert.verify_directly_issued_by(_ca(issuer))
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.2"


def test_validity_ends_on_fifth_birthday_in_japan():
    nb, na = validity(NOW, dt.date(1980, 5, 15), dt.date(2040, 1, 1))
    assert nb == NOW
    assert na.astimezone(JST) == dt.datetime(2031, 5, 15, 23, 59, 59, tzinfo=JST)


def test_validity_capped_at_card_expiry():
    _nb, na = validity(NOW, dt.date(1980, 5, 15), dt.date(2029, 3, 1))
    assert na.astimezone(JST).date() == dt.date(2029, 3, 1)


def test_generalized_time_after_2049(signing_issuer, ee_key):
    issuer, key = signing_issuer
    profile = CertificateProfile.from_config(CFG, "auth")
    end = dt.datetime(2051, 1, 1, tzinfo=UTC)
    cert = _sign(profile, issuer, key, serial=5, ee_key=ee_key, subject_der=end_entity_subject("auth", None, None, "X"),
                 basic4=None, not_before=NOW, not_after=end, partition="g1-p0")
    assert cert.not_valid_after_utc == end
    assert b"\x18\x0f20510101000000Z" in cert.tbs_certificate_bytes  # GeneralizedTime from 2050


def test_root_certificate(signing_issuer):
    issuer, _ = signing_issuer
    ca = _ca(issuer)
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature


def test_responder_certificate(signing_issuer, ee_key):
    issuer, key = signing_issuer
    tbs = responder_tbs(issuer, spki_der=_spki(ee_key), serial=77, not_before=NOW,
                        not_after=NOW + dt.timedelta(days=30))
    cert = x509.load_der_x509_certificate(assemble_certificate(tbs.dump(), issuer.algorithm,
                                                               software_sign(key, issuer.algorithm, tbs.dump())))
    cert.verify_directly_issued_by(_ca(issuer))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    assert cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
