"""Building online-window applications: the card's side of POST /v1/online/* (for residents and tests).

An application is a DER ContentInfo of CMS SignedData (RFC 5652) whose eContent (id-data) is the UTF-8
JSON document, signed with the key of the certificate being revoked or checked (RSA PKCS#1 v1.5 with
SHA-256 over the signed attributes), that certificate included. The key is a callable, so that a key
file, a PKCS#11 token (the card) or a test's in-memory key all fit.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
from typing import Callable

from asn1crypto import algos, cms, core, x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from ca_core.clock import format_rfc3339

Sign = Callable[[bytes], bytes]  # message -> RSA PKCS#1 v1.5 SHA-256 signature

CONTENT_TYPE = "application/pkcs7-mime"


def key_signer(private_key) -> Sign:
    """A Sign callable over an in-memory RSA key (cryptography)."""
    return lambda data: private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def pkcs11_signer(module: str, token_label: str, pin: str, key_label: str) -> Sign:
    """A Sign callable over a key in a PKCS#11 token (the card's role); one session per call."""
    import pkcs11
    from pkcs11 import KeyType, Mechanism, ObjectClass

    lib = pkcs11.lib(module)

    def sign(data: bytes) -> bytes:
        token = lib.get_token(token_label=token_label)
        with token.open(user_pin=pin) as session:
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.RSA, label=key_label)
            return key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)

    return sign


def document(procedure: str, serial: int, applicant: dict, *, issued_at: dt.datetime | None = None,
             nonce: bytes | None = None) -> bytes:
    """The application document (UTF-8 JSON)."""
    issued_at = issued_at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    body = {
        "procedure": procedure,
        "serial": format(serial, "x"),
        "issued_at": format_rfc3339(issued_at),
        "nonce": base64.b64encode(nonce if nonce is not None else secrets.token_bytes(16)).decode(),
        "applicant": applicant,
    }
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def signed_data(content: bytes, certificate_der: bytes, sign: Sign, *, signed_attrs: bool = True,
                extra_certificates: tuple[bytes, ...] = (), signing_time: dt.datetime | None = None) -> bytes:
    """ContentInfo(SignedData) over ``content`` with one signer identified by issuerAndSerialNumber."""
    cert = ax509.Certificate.load(certificate_der)
    sid = cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber({
        "issuer": cert.issuer, "serial_number": cert.serial_number})})
    digest_alg = algos.DigestAlgorithm({"algorithm": "sha256"})
    signer = {
        "version": "v1",
        "sid": sid,
        "digest_algorithm": digest_alg,
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
    }
    if signed_attrs:
        attrs = cms.CMSAttributes([
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute({"type": "signing_time", "values": [cms.Time(
                {"utc_time": (signing_time or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)})]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(content).digest()]}),
        ])
        signer["signed_attrs"] = attrs
        # RFC 5652 5.4: the signature covers the DER SET OF (tag 0x31) of the attributes.
        to_sign = b"\x31" + attrs.dump()[1:]
    else:
        to_sign = content
    signer["signature"] = sign(to_sign)
    sd = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [digest_alg],
        "encap_content_info": {"content_type": "data", "content": content},
        "certificates": [cms.CertificateChoices({"certificate": cert})]
        + [cms.CertificateChoices({"certificate": ax509.Certificate.load(d)}) for d in extra_certificates],
        "signer_infos": [cms.SignerInfo(signer)],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": sd}).dump()


def applicant_from_certificate(certificate_der: bytes) -> dict | None:
    """The basic-4 information from a signing certificate's subjectAltName otherNames (None for auth)."""
    cert = x509.load_der_x509_certificate(certificate_der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    values = {}
    for other in san.get_values_for_type(x509.OtherName):
        oid = other.type_id.dotted_string
        try:
            values[oid] = core.UTF8String.load(other.value).native
        except ValueError:
            continue
    base = "1.2.392.200149.8.5.5."
    if base + "1" not in values:
        return None
    return {"name": values.get(base + "1"), "address": values.get(base + "5"),
            "birth_date": values.get(base + "4"), "sex": values.get(base + "3")}


def build(procedure: str, certificate_der: bytes, sign: Sign, applicant: dict | None = None, *,
          issued_at: dt.datetime | None = None, nonce: bytes | None = None, serial: int | None = None) -> bytes:
    """A complete application for ``procedure`` ('revocation' or 'validity_check')."""
    cert = x509.load_der_x509_certificate(certificate_der)
    applicant = applicant or applicant_from_certificate(certificate_der)
    if applicant is None:
        raise ValueError("give the applicant's name, address, birth date and sex (not in an auth certificate)")
    content = document(procedure, serial if serial is not None else cert.serial_number, applicant,
                       issued_at=issued_at, nonce=nonce)
    return signed_data(content, certificate_der, sign)
