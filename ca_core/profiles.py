"""Certificate profiles (MISSION.md "The two certificate kinds"): TBS structures built from
(profile, request, time). Signing happens elsewhere; these functions only encode.

Extensions of an end-entity certificate, in order: keyUsage (critical), certificatePolicies (critical),
subjectAltName (signing only: six otherNames, UTF8String), issuerAltName, cRLDistributionPoints (the
partition CRL), freshestCRL (where deltas are published), authorityKeyIdentifier, subjectKeyIdentifier.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from asn1crypto import core, keys, x509

from .algorithms import SignatureAlgorithm
from .ca import Issuer, key_identifier
from .clock import JST, UTC
from .config import CAConfig, Config
from .names import build_name
from .resident import BasicFour, nth_birthday_after

KINDS = ("signing", "auth")

# JPKI otherName type ids for the basic 4 information (MISSION.md).
OID_NAME = "1.2.392.200149.8.5.5.1"
OID_NAME_SUBSTITUTES = "1.2.392.200149.8.5.5.2"
OID_SEX = "1.2.392.200149.8.5.5.3"
OID_BIRTH_DATE = "1.2.392.200149.8.5.5.4"
OID_ADDRESS = "1.2.392.200149.8.5.5.5"
OID_ADDRESS_SUBSTITUTES = "1.2.392.200149.8.5.5.6"

CERTIFICATE_LIFETIME_BIRTHDAYS = 5


@dataclass(frozen=True)
class CertificateProfile:
    """What a certificate of one kind carries; built once from configuration."""

    kind: str
    policy_oid: str
    cps_uri: str
    issuer_alt_name: x509.Name
    base_url: str
    publish_deltas: bool

    @classmethod
    def from_config(cls, cfg: Config, kind: str) -> "CertificateProfile":
        ca: CAConfig = cfg.ca.get(kind)
        return cls(kind=kind, policy_oid=ca.policy_oid, cps_uri=ca.cps_uri,
                   issuer_alt_name=build_name(ca.issuer_alt_name),
                   base_url=cfg.server.public_base_url.rstrip("/"),
                   publish_deltas=cfg.issuance.publish_deltas)

    def crl_url(self, partition: str) -> str:
        return f"{self.base_url}/crl/{self.kind}/{partition}.crl"

    def delta_crl_url(self, partition: str) -> str:
        return f"{self.base_url}/crl/{self.kind}/{partition}-delta.crl"


def partition_name(generation: int, partition: int) -> str:
    """The name of a CRL partition in URLs: one CA generation, one block of certificates."""
    return f"g{generation}-p{partition}"


def end_of_day_jst(day: dt.date) -> dt.datetime:
    """23:59:59 Japan time on ``day``, in UTC: dates in JPKI rules are Japanese calendar dates."""
    return dt.datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=JST).astimezone(UTC)


def validity(now: dt.datetime, birth: dt.date, card_expires_on: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """notBefore = now; notAfter = the end of the 5th birthday after issuance, capped at the card's expiry."""
    today = now.astimezone(JST).date()
    fifth = nth_birthday_after(birth, today, CERTIFICATE_LIFETIME_BIRTHDAYS)
    return now, end_of_day_jst(min(fifth, card_expires_on))


def x509_time(value: dt.datetime) -> x509.Time:
    """UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 section 4.1.2.5)."""
    if value.year < 2050:
        return x509.Time(name="utc_time", value=value)
    return x509.Time(name="general_time", value=value)


def end_entity_subject(kind: str, prefecture: str | None, municipality: str | None, issue_id: str) -> x509.Name:
    """signing: C=JP, L=prefecture, L=municipality, CN=issue id; auth: C=JP, CN=id."""
    if kind == "signing":
        return build_name((("C", "JP"), ("L", prefecture), ("L", municipality), ("CN", issue_id)))
    return build_name((("C", "JP"), ("CN", issue_id)))


def _other_name(oid: str, value: str) -> x509.GeneralName:
    return x509.GeneralName(name="other_name", value=x509.AnotherName({
        "type_id": oid, "value": core.UTF8String(value, explicit=0)}))


def basic4_alt_names(info: BasicFour) -> x509.GeneralNames:
    """The six otherName values of the signing certificate's subjectAltName, all UTF8String."""
    return x509.GeneralNames([
        _other_name(OID_NAME, info.name),
        _other_name(OID_NAME_SUBSTITUTES, info.name_substitutes),
        _other_name(OID_SEX, info.sex),
        _other_name(OID_BIRTH_DATE, info.birth_date),
        _other_name(OID_ADDRESS, info.address),
        _other_name(OID_ADDRESS_SUBSTITUTES, info.address_substitutes),
    ])


def _ext(name: str, value, critical: bool = False) -> x509.Extension:
    return x509.Extension({"extn_id": name, "critical": critical, "extn_value": value})


def _distribution_points(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints([x509.DistributionPoint({
        "distribution_point": x509.DistributionPointName(
            name="full_name", value=[x509.GeneralName(name="uniform_resource_identifier", value=url)]),
    })])


def _aki(issuer: Issuer) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier({"key_identifier": issuer.key_id})


def _policies(oid: str, cps_uri: str) -> x509.CertificatePolicies:
    return x509.CertificatePolicies([x509.PolicyInformation({
        "policy_identifier": oid,
        "policy_qualifiers": [x509.PolicyQualifierInfo({
            "policy_qualifier_id": "certification_practice_statement",
            "qualifier": core.IA5String(cps_uri),
        })],
    })])


def _tbs(serial: int, alg: SignatureAlgorithm, issuer_name: x509.Name, subject: x509.Name,
         spki: keys.PublicKeyInfo, not_before: dt.datetime, not_after: dt.datetime,
         extensions: list) -> x509.TbsCertificate:
    return x509.TbsCertificate({
        "version": "v3",
        "serial_number": serial,
        "signature": alg.identifier(),
        "issuer": issuer_name,
        "validity": x509.Validity({"not_before": x509_time(not_before), "not_after": x509_time(not_after)}),
        "subject": subject,
        "subject_public_key_info": spki,
        "extensions": extensions,
    })


def end_entity_tbs(profile: CertificateProfile, issuer: Issuer, *, serial: int, spki_der: bytes,
                   subject: x509.Name, basic4: BasicFour | None, not_before: dt.datetime,
                   not_after: dt.datetime, partition: str) -> x509.TbsCertificate:
    """TBSCertificate of a resident's certificate of ``profile.kind``."""
    spki = keys.PublicKeyInfo.load(spki_der)
    usage = {"digital_signature", "non_repudiation"} if profile.kind == "signing" else {"digital_signature"}
    exts = [
        _ext("key_usage", x509.KeyUsage(usage), critical=True),
        _ext("certificate_policies", _policies(profile.policy_oid, profile.cps_uri), critical=True),
    ]
    if profile.kind == "signing":
        if basic4 is None:
            raise ValueError("a signing certificate needs the basic 4 information")
        exts.append(_ext("subject_alt_name", basic4_alt_names(basic4)))
    exts.append(_ext("issuer_alt_name", x509.GeneralNames([
        x509.GeneralName(name="directory_name", value=profile.issuer_alt_name)])))
    exts.append(_ext("crl_distribution_points", _distribution_points(profile.crl_url(partition))))
    if profile.publish_deltas:
        exts.append(_ext("freshest_crl", _distribution_points(profile.delta_crl_url(partition))))
    exts.append(_ext("authority_key_identifier", _aki(issuer)))
    exts.append(_ext("key_identifier", core.OctetString(key_identifier(spki))))
    return _tbs(serial, issuer.algorithm, issuer.name, subject, spki, not_before, not_after, exts)


def root_tbs(*, ca_name: x509.Name, spki_der: bytes, alg: SignatureAlgorithm, serial: int,
             not_before: dt.datetime, not_after: dt.datetime) -> x509.TbsCertificate:
    """TBSCertificate of a self-signed CA certificate (RFC 5280 4.2.1.9, 4.2.1.3)."""
    spki = keys.PublicKeyInfo.load(spki_der)
    kid = key_identifier(spki)
    exts = [
        _ext("basic_constraints", x509.BasicConstraints({"ca": True}), critical=True),
        _ext("key_usage", x509.KeyUsage({"key_cert_sign", "crl_sign"}), critical=True),
        _ext("key_identifier", core.OctetString(kid)),
        _ext("authority_key_identifier", x509.AuthorityKeyIdentifier({"key_identifier": kid})),
    ]
    return _tbs(serial, alg, ca_name, ca_name, spki, not_before, not_after, exts)


def responder_tbs(issuer: Issuer, *, spki_der: bytes, serial: int, not_before: dt.datetime,
                  not_after: dt.datetime) -> x509.TbsCertificate:
    """Delegated OCSP responder certificate (RFC 6960 4.2.2.2: id-kp-OCSPSigning; 4.2.2.2.1: nocheck)."""
    spki = keys.PublicKeyInfo.load(spki_der)
    pairs = [(_short(rdn), rdn[0]["value"].native) for rdn in issuer.name.chosen]
    subject = build_name(pairs + [("CN", f"OCSP Responder {issuer.ca_id} g{issuer.generation}")])
    exts = [
        _ext("key_usage", x509.KeyUsage({"digital_signature"}), critical=True),
        _ext("extended_key_usage", x509.ExtKeyUsageSyntax(["ocsp_signing"])),
        _ext("ocsp_no_check", core.Null()),
        _ext("authority_key_identifier", _aki(issuer)),
        _ext("key_identifier", core.OctetString(key_identifier(spki))),
    ]
    return _tbs(serial, issuer.algorithm, issuer.name, subject, spki, not_before, not_after, exts)


_SHORT = {"country_name": "C", "state_or_province_name": "ST", "locality_name": "L",
          "organization_name": "O", "organizational_unit_name": "OU", "common_name": "CN"}


def _short(rdn) -> str:
    return _SHORT[rdn[0]["type"].native]


def assemble_certificate(tbs: x509.TbsCertificate, alg: SignatureAlgorithm, signature: bytes) -> bytes:
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue } (RFC 5280 4.1)."""
    return x509.Certificate({
        "tbs_certificate": tbs,
        "signature_algorithm": alg.identifier(),
        "signature_value": signature,
    }).dump()
