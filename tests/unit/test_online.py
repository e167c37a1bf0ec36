"""Parsing and verifying online-window applications (ca_core.online), without database or token."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_core import errors, online
from revocation import online_client

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)
APPLICANT = {"name": "山田　花子", "address": "東京都千代田区千代田１番１号", "birth_date": "319850412", "sex": "2"}


@pytest.fixture(scope="module")
def pki():
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    card_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"), x509.NameAttribute(NameOID.COMMON_NAME, "CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(NOW - dt.timedelta(days=10)).not_valid_after(NOW + dt.timedelta(days=3650))
          .add_extension(ski, critical=False).sign(ca_key, hashes.SHA256()))
    card = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "card")])).issuer_name(name)
            .public_key(card_key.public_key()).serial_number(0x1234ABCD)
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=365))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return {"ca": ca.public_bytes(Encoding.DER), "card": card.public_bytes(Encoding.DER), "card_key": card_key,
            "ski": ski.digest}


def build(pki, procedure="revocation", **kw):
    return online_client.build(procedure, pki["card"], online_client.key_signer(pki["card_key"]), APPLICANT,
                               issued_at=kw.pop("issued_at", NOW), **kw)


def code_of(fn, *args):
    with pytest.raises(errors.ShomeiError) as exc:
        fn(*args)
    return exc.value


def test_good_application_passes_every_check(pki):
    app = online.parse_application(build(pki), "revocation")
    assert app.document.serial == 0x1234ABCD and app.document.procedure == "revocation"
    assert app.authority_key_id == pki["ski"] and app.message_digest is not None
    online.verify_certificate(app, pki["ca"])
    online.verify_signature(app)
    online.check_serial(app)
    online.check_not_expired(app, NOW)
    online.check_fresh(app, NOW)


def test_procedure_must_match_endpoint(pki):
    err = code_of(online.parse_application, build(pki, "validity_check"), "revocation")
    assert err.code == "malformed" and err.field == "procedure" and isinstance(err, errors.InvalidRequest)


def test_wrong_key_is_application_signature_invalid(pki):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = online_client.build("revocation", pki["card"], online_client.key_signer(other), APPLICANT, issued_at=NOW)
    app = online.parse_application(der, "revocation")
    err = code_of(online.verify_signature, app)
    assert err.code == "application_signature_invalid" and err.message_ja.startswith("失効申請書")


def test_other_ca_is_unknown_issuer_or_bad_signature(pki):
    app = online.parse_application(build(pki), "revocation")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = x509.load_der_x509_certificate(pki["ca"])
    same_name = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject)
                 .public_key(other_key.public_key()).serial_number(2).not_valid_before(NOW)
                 .not_valid_after(NOW + dt.timedelta(days=1)).sign(other_key, hashes.SHA256()))
    err = code_of(online.verify_certificate, app, same_name.public_bytes(Encoding.DER))
    assert err.code == "certificate_signature_invalid"
    other_name = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "X")]))
                  .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "X")]))
                  .public_key(other_key.public_key()).serial_number(3).not_valid_before(NOW)
                  .not_valid_after(NOW + dt.timedelta(days=1)).sign(other_key, hashes.SHA256()))
    assert code_of(online.verify_certificate, app, other_name.public_bytes(Encoding.DER)).code == "unknown_issuer"


def test_expired_stale_and_serial_mismatch(pki):
    app = online.parse_application(build(pki), "revocation")
    assert code_of(online.check_not_expired, app, NOW + dt.timedelta(days=366)).code == "certificate_expired"
    assert code_of(online.check_fresh, app, NOW + dt.timedelta(minutes=10, seconds=1)).code == "stale"
    assert code_of(online.check_fresh, app, NOW - dt.timedelta(minutes=10, seconds=1)).code == "stale"
    online.check_fresh(app, NOW + dt.timedelta(minutes=10))
    bad = online.parse_application(build(pki, serial=0x99), "revocation")
    assert code_of(online.check_serial, bad).code == "serial_mismatch"


def test_signed_attributes_must_have_content_type_and_digest(pki):
    ci = cms.ContentInfo.load(build(pki))
    si = ci["content"]["signer_infos"][0]
    si["signed_attrs"] = cms.CMSAttributes([a for a in si["signed_attrs"] if a["type"].native != "message_digest"])
    assert code_of(online.parse_application, ci.dump(force=True), "revocation").code == "malformed"


@pytest.mark.parametrize("seed", range(200))
def test_random_mutations_never_raise_anything_but_typed_errors(pki, seed):
    import random

    rng = random.Random(seed)
    der = bytearray(build(pki))
    for _ in range(rng.randint(1, 8)):
        der[rng.randrange(len(der))] = rng.randrange(256)
    if rng.random() < 0.3:
        der = der[: rng.randrange(len(der))]
    try:
        app = online.parse_application(bytes(der), "revocation")
        online.verify_certificate(app, pki["ca"])
        online.verify_signature(app)
    except errors.ShomeiError as exc:
        assert exc.code in online.MESSAGES


@pytest.mark.parametrize("content", [b"", b"null", b"[]", b"{}", "{\"procedure\": \"revocation\"}".encode(),
                                     b'{"a": ' * 100000])
def test_bad_documents_are_malformed(pki, content):
    der = online_client.signed_data(content, pki["card"], online_client.key_signer(pki["card_key"]))
    assert code_of(online.parse_application, der, "revocation").code == "malformed"


def test_document_fields():
    base = {"procedure": "validity_check", "serial": "ff", "issued_at": "2026-11-22T03:00:00Z",
            "nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "applicant": APPLICANT}
    doc = online.parse_document(json.dumps(base).encode(), "validity_check")
    assert doc.serial == 255 and doc.issued_at == NOW and len(doc.nonce) == 16
    for field, value in (("nonce", "AAAA"), ("nonce", "A" * 60), ("serial", "-1"), ("serial", 5),
                         ("issued_at", "2026-11-22 03:00:00"), ("applicant", {**APPLICANT, "x": "1"}),
                         ("applicant", {**APPLICANT, "sex": 2})):
        err = code_of(online.parse_document, json.dumps({**base, field: value}).encode(), "validity_check")
        assert err.code == "malformed" and err.field.startswith(field), (field, value, err.field)


def test_every_code_has_english_and_japanese():
    for code in online.MESSAGES:
        for proc in online.PROCEDURES:
            en, ja = online.messages(code, proc)
            assert en and ja and en != ja
    assert isinstance(online.online_error("busy"), errors.Unavailable)
    assert isinstance(online.online_error("replayed"), errors.Conflict)
    assert type(online.online_error("internal_error")) is errors.ShomeiError
