"""Online window applications (オンライン窓口): CMS SignedData (RFC 5652) carrying a JSON application.

Pure parsing and verification, in the order of docs/domain.md (online window, the checks): the data has
the prescribed format (malformed), the certificate's issuer is ours (unknown_issuer), the CA's signature
on the certificate verifies (certificate_signature_invalid), the applicant's signature on the
application verifies (application_signature_invalid), the certificate has not expired
(certificate_expired). Checks that need the database (replay, status) are the service's.

Parsing is defensive: bytes come from anyone, so any exception raised while decoding them becomes
``malformed`` (400), never a 500.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from typing import Annotated, Literal

from asn1crypto import cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, ValidationError

from .clock import parse_rfc3339
from .errors import Conflict, InvalidRequest, PolicyViolation, ShomeiError, Unavailable
from .serials import parse_serial_hex

PROCEDURES = ("revocation", "validity_check")
MAX_SKEW = dt.timedelta(minutes=10)
NONCE_BYTES = (16, 32)

# code -> (English, Japanese); a dict value per procedure where the screens differ.
MESSAGES: dict[str, tuple] = {
    "malformed": (
        "The application data is not in the prescribed format. Create the application again with the "
        "application software and send it.",
        "受信データの形式エラーです。申請データを作成し直して、再度送信してください。"),
    "unknown_issuer": (
        "The certificate in the application was not issued by this certification authority. Apply with the "
        "certificate on your My Number card.",
        "電子証明書の有効性確認のエラーです。マイナンバーカードに格納された電子証明書で申請してください。"),
    "certificate_signature_invalid": (
        "The certificate in the application could not be verified. Contact your municipal office.",
        "電子証明書の検証エラーです。お住まいの市区町村の窓口にお問い合わせください。"),
    "application_signature_invalid": {
        "revocation": (
            "The signature on the revocation application could not be verified. Sign it again with the "
            "card that holds the certificate you want to revoke.",
            "失効申請書の検証エラーです。失効させる電子証明書が格納されたカードで再度署名してください。"),
        "validity_check": (
            "The signature on the validity-check application could not be verified. Sign it again with the "
            "card that holds the certificate you want to check.",
            "有効性確認申請書の検証エラーです。確認する電子証明書が格納されたカードで再度署名してください。"),
    },
    "serial_mismatch": (
        "The serial number in the application is not the one of the certificate that signed it. Create the "
        "application again from your card.",
        "申請書のシリアル番号が電子証明書と一致しません。カードから申請データを作成し直してください。"),
    "certificate_expired": {
        "revocation": (
            "The certificate has expired: it is no longer valid and needs no revocation.",
            "有効期限切れです。この電子証明書は有効期限が切れているため、失効の手続きは不要です。"),
        "validity_check": (
            "The certificate has expired and is not valid. For a new certificate, visit your municipal office.",
            "有効期限切れです。この電子証明書は有効ではありません。新しい電子証明書はお住まいの市区町村の窓口で"
            "発行を受けてください。"),
    },
    "stale": (
        "The time in the application differs from the service's by more than 10 minutes. Check the clock of "
        "your computer, then create the application again and send it.",
        "申請データの作成日時が正しくありません。パソコンの時計を確認し、申請データを作成し直して送信してください。"),
    "replayed": (
        "This application was already received. Create a new application and send it.",
        "同じ申請データを既に受信しています。申請データを作成し直して送信してください。"),
    "already_revoked": (
        "This certificate is already revoked; nothing more is needed. For a new certificate, visit your "
        "municipal office.",
        "失効済です。この電子証明書は既に失効しています。新しい電子証明書はお住まいの市区町村の窓口で発行を"
        "受けてください。"),
    "already_requested": (
        "A revocation application for this certificate was already accepted; it takes effect at the next "
        "revocation list issuance. Do not apply again.",
        "二重の失効申請です。この電子証明書の失効申請は既に受理されており、次回の失効情報の更新時に失効します。"
        "再度の申請は不要です。"),
    "busy": (
        "The service is busy. Wait a few minutes, then send the application again.",
        "混雑しています。しばらく時間をおいてから再度送信してください。"),
    "internal_error": (
        "A service error occurred and nothing was recorded. Send the application again later.",
        "サービスのエラーです。申請は受け付けられていません。しばらく時間をおいてから再度送信してください。"),
    "unsupported_media_type": (
        "The application must be sent as Content-Type: application/pkcs7-mime.",
        "受信データの形式エラーです。申請データを application/pkcs7-mime として送信してください。"),
    "request_timeout": (
        "The application did not arrive in time. Check your connection and send it again.",
        "受信データの受信がタイムアウトしました。通信環境を確認して、再度送信してください。"),
    "payload_too_large": (
        "The application data is too large. Create the application again and send it.",
        "受信データの形式エラーです。申請データが大きすぎます。申請データを作成し直して送信してください。"),
}

_CLASSES = {
    "malformed": InvalidRequest,
    "unknown_issuer": PolicyViolation,
    "certificate_signature_invalid": PolicyViolation,
    "application_signature_invalid": PolicyViolation,
    "serial_mismatch": PolicyViolation,
    "certificate_expired": PolicyViolation,
    "stale": PolicyViolation,
    "replayed": Conflict,
    "already_revoked": Conflict,
    "already_requested": Conflict,
}


def messages(code: str, procedure: str | None = None) -> tuple[str, str]:
    """(English, Japanese) message of an error code for a procedure."""
    entry = MESSAGES.get(code, MESSAGES["internal_error"])
    if isinstance(entry, dict):
        entry = entry.get(procedure or "revocation", entry["revocation"])
    return entry


def online_error(code: str, procedure: str | None = None, *, field: str | None = None,
                 retry_after: int = 5) -> ShomeiError:
    """The typed error of an online-window code, with its English and Japanese messages."""
    en, ja = messages(code, procedure)
    if code == "busy":
        return Unavailable(en, code="busy", message_ja=ja, retry_after=retry_after)
    cls = _CLASSES.get(code, ShomeiError)
    return cls(en, code=code, field=field, message_ja=ja)


@dataclass(frozen=True)
class Applicant:
    name: str
    address: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class Document:
    """The application document (eContent, UTF-8 JSON)."""

    procedure: str
    serial: int
    issued_at: dt.datetime
    nonce: bytes
    applicant: Applicant


@dataclass(frozen=True)
class Application:
    """A parsed application: the document, the signer's certificate, and what its signature covers."""

    document: Document
    certificate: x509.Certificate
    certificate_der: bytes
    authority_key_id: bytes | None
    signed_data: bytes  # the bytes the signature is over (eContent, or the DER SET OF signed attributes)
    signature: bytes
    signature_algorithm: str
    content: bytes
    message_digest: bytes | None  # messageDigest attribute, when signed attributes are present


def _malformed(procedure: str | None, field: str | None = None) -> ShomeiError:
    return online_error("malformed", procedure, field=field)


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _serial(value) -> int:
    if not isinstance(value, str):
        raise ValueError("a hex string")
    return parse_serial_hex(value)


def _nonce(value) -> bytes:
    if not isinstance(value, str):
        raise ValueError("base64 text")
    nonce = base64.b64decode(value, validate=True)
    if not NONCE_BYTES[0] <= len(nonce) <= NONCE_BYTES[1]:
        raise ValueError(f"{NONCE_BYTES[0]} to {NONCE_BYTES[1]} octets")
    return nonce


def _utc(value) -> dt.datetime:
    return parse_rfc3339(value).astimezone(dt.timezone.utc)


_Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ApplicantBody(_Strict):
    name: _Text
    address: _Text
    birth_date: _Text
    sex: _Text


class _DocumentBody(_Strict):
    """The application document as the card's software writes it (UTF-8 JSON, every field required)."""

    procedure: Literal[PROCEDURES]  # type: ignore[valid-type]
    serial: Annotated[int, BeforeValidator(_serial)]
    issued_at: Annotated[dt.datetime, BeforeValidator(_utc)]
    nonce: Annotated[bytes, BeforeValidator(_nonce)]
    applicant: _ApplicantBody


def _first_field(exc: ValidationError) -> str:
    """The field named in a malformed answer: an unknown or missing key first (in name order), then the
    first wrong field."""
    found = exc.errors()
    for kind in ("extra_forbidden", "missing"):
        names = sorted(".".join(map(str, e["loc"])) for e in found if e["type"] == kind)
        if names:
            return names[0]
    return ".".join(map(str, found[0]["loc"])) or "content"


def parse_document(content: bytes, expected: str) -> Document:
    """Parse and check the JSON application; raises the malformed error naming the field."""
    try:
        data = json.loads(content.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _malformed(expected, "content") from None
    if not isinstance(data, dict):
        raise _malformed(expected, "content")
    try:
        body = _DocumentBody.model_validate(data)
    except ValidationError as exc:
        raise _malformed(expected, _first_field(exc)) from None
    if body.procedure != expected:
        raise _malformed(expected, "procedure")
    return Document(expected, body.serial, body.issued_at, body.nonce, Applicant(**body.applicant.model_dump()))


def parse_application(der: bytes, expected: str) -> Application:
    """Parse a DER ContentInfo holding SignedData with one signer and its certificate (RFC 5652 5).

    Raises the malformed error for anything but exactly that; never another exception."""
    try:
        return _parse(der, expected)
    except ShomeiError:
        raise
    except Exception:  # hostile DER can raise anything inside asn1crypto or cryptography
        raise _malformed(expected) from None


def _parse(der: bytes, expected: str) -> Application:
    info = cms.ContentInfo.load(der, strict=True)
    if info["content_type"].native != "signed_data":
        raise _malformed(expected, "contentType")
    sd = info["content"]
    content = _encapsulated_content(sd, expected)
    signers = sd["signer_infos"]
    if len(signers) != 1:
        raise _malformed(expected, "signerInfos")
    signer = signers[0]
    certs = sd["certificates"]
    if isinstance(certs, core.Void) or not 0 < len(certs) <= 4:  # .native would decode every certificate
        raise _malformed(expected, "certificates")
    cert_der = _signer_certificate(certs, signer["sid"])
    if cert_der is None:
        raise _malformed(expected, "sid")
    if signer["digest_algorithm"]["algorithm"].native != "sha256":
        raise _malformed(expected, "digestAlgorithm")
    sig_alg = signer["signature_algorithm"]["algorithm"].native
    if sig_alg not in ("rsassa_pkcs1v15", "sha256_rsa", "sha256_ecdsa"):
        raise _malformed(expected, "signatureAlgorithm")
    signed, message_digest = _signed_bytes(signer["signed_attrs"], content, expected)
    certificate = x509.load_der_x509_certificate(cert_der)
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    certificate.public_key()  # an unparsable key is malformed, not a signature failure
    document = parse_document(content, expected)
    return Application(document=document, certificate=certificate, certificate_der=cert_der,
                       authority_key_id=aki, signed_data=signed, signature=signer["signature"].native,
                       signature_algorithm=sig_alg, content=content, message_digest=message_digest)


def _encapsulated_content(sd, expected: str) -> bytes:
    """The application document carried in the SignedData (id-data, never detached)."""
    encap = sd["encap_content_info"]
    if encap["content_type"].native != "data":
        raise _malformed(expected, "eContentType")
    if isinstance(encap["content"], core.Void):  # detached content is not accepted
        raise _malformed(expected, "eContent")
    content = encap["content"].native
    return content if isinstance(content, bytes) else encap["content"].contents


def _signed_bytes(attrs, content: bytes, expected: str) -> tuple[bytes, bytes | None]:
    """What the signature covers, and the messageDigest it then vouches for (RFC 5652 5.4): the DER
    SET OF signed attributes when there are any, else the content itself."""
    if isinstance(attrs, core.Void) or not len(attrs):
        return content, None
    values = {}
    for attr in attrs:
        name = attr["type"].native
        if name in values or len(attr["values"]) != 1:
            raise _malformed(expected, "signedAttrs")
        values[name] = attr["values"][0]
    # RFC 5652 5.3: with signed attributes, content-type and message-digest are required.
    if "content_type" not in values or "message_digest" not in values:
        raise _malformed(expected, "signedAttrs")
    if values["content_type"].native != "data":
        raise _malformed(expected, "signedAttrs")
    # The signature is over the DER of the SET OF attributes (tag 0x31), not the [0] IMPLICIT form.
    return b"\x31" + attrs.dump()[1:], values["message_digest"].native


def _signer_certificate(certs, sid) -> bytes | None:
    """The certificate that ``sid`` names (issuerAndSerialNumber or subjectKeyIdentifier)."""
    for choice in certs:
        if choice.name != "certificate":
            continue
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            if (cert.serial_number == ias["serial_number"].native
                    and cert.issuer.dump() == ias["issuer"].dump()):
                return cert.dump()
        elif sid.name == "subject_key_identifier":
            if cert.key_identifier == sid.chosen.native:
                return cert.dump()
    return None


def verify_certificate(app: Application, ca_certificate_der: bytes) -> None:
    """The CA's signature on the applicant's certificate; raises certificate_signature_invalid
    (or unknown_issuer when the issuer name is not the CA's)."""
    proc = app.document.procedure
    ca = x509.load_der_x509_certificate(ca_certificate_der)
    if app.certificate.issuer != ca.subject:
        raise online_error("unknown_issuer", proc)
    try:
        app.certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise online_error("certificate_signature_invalid", proc) from None


def verify_signature(app: Application) -> None:
    """The applicant's signature on the application: messageDigest equals SHA-256 of the content (when
    signed attributes are present), and the signature over the signed bytes verifies with the
    certificate's key (RSA PKCS#1 v1.5 or ECDSA, SHA-256). Raises application_signature_invalid."""
    proc = app.document.procedure
    bad = online_error("application_signature_invalid", proc)
    if app.message_digest is not None and app.message_digest != hashlib.sha256(app.content).digest():
        raise bad
    key = app.certificate.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and app.signature_algorithm in ("rsassa_pkcs1v15", "sha256_rsa"):
            key.verify(app.signature, app.signed_data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey) and app.signature_algorithm == "sha256_ecdsa":
            key.verify(app.signature, app.signed_data, ec.ECDSA(hashes.SHA256()))
        else:
            raise bad
    except (InvalidSignature, ValueError, TypeError):
        raise bad from None


def check_serial(app: Application) -> None:
    """The document names the certificate that signed it."""
    if app.document.serial != app.certificate.serial_number:
        raise online_error("serial_mismatch", app.document.procedure, field="serial")


def check_not_expired(app: Application, now: dt.datetime) -> None:
    if app.certificate.not_valid_after_utc < now:
        raise online_error("certificate_expired", app.document.procedure)


def check_fresh(app: Application, now: dt.datetime, max_skew: dt.timedelta = MAX_SKEW) -> None:
    """issued_at within ``max_skew`` of now (either way); raises stale."""
    if abs(app.document.issued_at - now) > max_skew:
        raise online_error("stale", app.document.procedure, field="issued_at")
