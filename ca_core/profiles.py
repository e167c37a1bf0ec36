"""Certificate profiles (docs/domain.md, the two certificate profiles): TBS structures built from
(profile, request, time). Signing happens elsewhere; these functions only encode.

Extensions of an end-entity certificate, in order: keyUsage (critical), certificatePolicies (critical),
subjectAltName (signing only: six otherNames, UTF8String), issuerAltName, cRLDistributionPoints (the
partition CRL), freshestCRL (where deltas are published), authorityInfoAccess (OCSP, caIssuers),
authorityKeyIdentifier, subjectKeyIdentifier.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from asn1crypto import core, keys, x509

from . import der
from .algorithms import SignatureAlgorithm
from .ca import Issuer, key_identifier
from .clock import JST, UTC
from .config import CAConfig, Config
from .kinds import SIGNING
from .names import build_name
from .resident import BasicFour, nth_birthday_after


# JPKI otherName type ids for the basic 4 information (docs/domain.md, the two certificate profiles).
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
    ocsp_in_aia: bool = True

    @classmethod
    def from_config(cls, cfg: Config, kind: str) -> "CertificateProfile":
        ca: CAConfig = cfg.ca.get(kind)
        return cls(kind=kind, policy_oid=ca.policy_oid, cps_uri=ca.cps_uri,
                   issuer_alt_name=build_name(ca.issuer_alt_name),
                   base_url=cfg.server.public_base_url.rstrip("/"),
                   publish_deltas=cfg.issuance.publish_deltas, ocsp_in_aia=cfg.issuance.ocsp_in_aia)

    def crl_url(self, partition: str) -> str:
        return f"{self.base_url}/crl/{self.kind}/{partition}.crl"

    def delta_crl_url(self, partition: str) -> str:
        return f"{self.base_url}/crl/{self.kind}/{partition}-delta.crl"

    @property
    def ocsp_url(self) -> str:
        """The responder (POST to it, or GET it + "/" + base64 of the request, RFC 5019 section 5)."""
        return f"{self.base_url}/ocsp"

    def ca_issuers_url(self, issuer: Issuer) -> str:
        """The issuing CA generation's certificate, DER over HTTP (RFC 5280 4.2.2.1)."""
        return f"{self.base_url}/ca/{issuer.ca_id}/{issuer.key_id.hex()}.crt"


def authority_info_access(profile: CertificateProfile, issuer: Issuer) -> x509.AuthorityInfoAccessSyntax:
    """authorityInfoAccess (RFC 5280 4.2.2.1): where the status is (OCSP, unless the deployment keeps OCSP
    to registered verifiers) and where the issuer's certificate is (caIssuers)."""
    def access(method: str, url: str) -> x509.AccessDescription:
        return x509.AccessDescription({"access_method": method, "access_location": x509.GeneralName(
            name="uniform_resource_identifier", value=url)})

    items = [access("ocsp", profile.ocsp_url)] if profile.ocsp_in_aia else []
    return x509.AuthorityInfoAccessSyntax(items + [access("ca_issuers", profile.ca_issuers_url(issuer))])


def partition_name(generation: int, partition: int) -> str:
    """The name of a CRL partition in URLs: one CA generation, one block of certificates."""
    return f"g{generation}-p{partition}"


def end_of_day_jst(day: dt.date) -> dt.datetime:
    """23:59:59 Japan time on ``day``, in UTC: dates in JPKI rules are Japanese calendar dates."""
    return dt.datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=JST).astimezone(UTC)


def validity(now: dt.datetime, birth: dt.date, card_expires_on: dt.date,
             ca_not_after: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """notBefore = now; notAfter = the end of the 5th birthday after issuance, capped at the card's expiry
    and at the issuing CA certificate's notAfter (a certificate never outlives its CA, RFC 5280 6.1.3)."""
    today = now.astimezone(JST).date()
    fifth = nth_birthday_after(birth, today, CERTIFICATE_LIFETIME_BIRTHDAYS)
    not_after = end_of_day_jst(min(fifth, card_expires_on))
    if ca_not_after is not None:
        not_after = min(not_after, ca_not_after)
    return now, not_after


def x509_time(value: dt.datetime) -> x509.Time:
    """UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 section 4.1.2.5)."""
    if value.year < 2050:
        return x509.Time(name="utc_time", value=value)
    return x509.Time(name="general_time", value=value)


_NAME_OIDS = {attr: der.tlv(der.OID, core.ObjectIdentifier(oid).contents) for attr, oid in
              (("C", "2.5.4.6"), ("L", "2.5.4.7"), ("CN", "2.5.4.3"))}


def _rdn(attr: str, value: str) -> bytes:
    text = der.tlv(der.PRINTABLE_STRING, value.encode("ascii")) if attr == "C" else der.utf8(value)
    return der.tlv(der.SET, der.sequence(_NAME_OIDS[attr], text))


def end_entity_subject(kind: str, prefecture: str | None, municipality: str | None, issue_id: str) -> bytes:
    """Subject DER. signing: C=JP, L=prefecture, L=municipality, CN=issue id; auth: C=JP, CN=id."""
    if kind == SIGNING:
        return der.sequence(_rdn("C", "JP"), _rdn("L", prefecture), _rdn("L", municipality), _rdn("CN", issue_id))
    return der.sequence(_rdn("C", "JP"), _rdn("CN", issue_id))


_SAN_OID = der.tlv(der.OID, core.ObjectIdentifier("2.5.29.17").contents)
_SKI_OID = der.tlv(der.OID, core.ObjectIdentifier("2.5.29.14").contents)
_BASIC4_OIDS = [der.tlv(der.OID, core.ObjectIdentifier(oid).contents) for oid in
                (OID_NAME, OID_NAME_SUBSTITUTES, OID_SEX, OID_BIRTH_DATE, OID_ADDRESS, OID_ADDRESS_SUBSTITUTES)]


def basic4_alt_names(info: BasicFour) -> bytes:
    """subjectAltName extension DER: six otherName values, each [0] EXPLICIT UTF8String (RFC 5280 4.2.1.6)."""
    values = (info.name, info.name_substitutes, info.sex, info.birth_date, info.address, info.address_substitutes)
    names = b"".join(der.context(0, oid + der.context(0, der.utf8(v))) for oid, v in zip(_BASIC4_OIDS, values))
    return der.sequence(_SAN_OID, der.octet_string(der.sequence(names)))


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


_V3 = der.context(0, der.integer(2))


class CertificateTemplate:
    """The constant DER of one profile under one issuer, encoded once; ``tbs`` writes only what varies
    (asn1crypto would rebuild the whole tree for every certificate, milliseconds each)."""

    def __init__(self, profile: CertificateProfile, issuer: Issuer):
        self.profile = profile
        self.issuer = issuer
        usage = {"digital_signature", "non_repudiation"} if profile.kind == SIGNING else {"digital_signature"}
        self._signature_and_issuer = issuer.algorithm.identifier_der + issuer.name_der
        self._head_extensions = (
            _ext("key_usage", x509.KeyUsage(usage), critical=True).dump()
            + _ext("certificate_policies", _policies(profile.policy_oid, profile.cps_uri), critical=True).dump())
        self._issuer_alt_name = _ext("issuer_alt_name", x509.GeneralNames([
            x509.GeneralName(name="directory_name", value=profile.issuer_alt_name)])).dump()
        self._aki = _ext("authority_key_identifier", _aki(issuer)).dump()
        self._aia = _ext("authority_information_access", authority_info_access(profile, issuer)).dump()
        self._partitions: dict[str, bytes] = {}

    def _partition_extensions(self, partition: str) -> bytes:
        ext = self._partitions.get(partition)
        if ext is None:
            ext = _ext("crl_distribution_points", _distribution_points(self.profile.crl_url(partition))).dump()
            if self.profile.publish_deltas:
                ext += _ext("freshest_crl", _distribution_points(self.profile.delta_crl_url(partition))).dump()
            self._partitions[partition] = ext
        return ext

    def tbs(self, *, serial: int, spki_der: bytes, key_id: bytes, subject_der: bytes, basic4: BasicFour | None,
            not_before: dt.datetime, not_after: dt.datetime, partition: str) -> bytes:
        """TBSCertificate DER of a resident's certificate (RFC 5280 4.1)."""
        if self.profile.kind == SIGNING:
            if basic4 is None:
                raise ValueError("a signing certificate needs the basic 4 information")
            san = basic4_alt_names(basic4)
        else:
            san = b""
        extensions = (self._head_extensions + san + self._issuer_alt_name + self._partition_extensions(partition)
                      + self._aia + self._aki + der.sequence(_SKI_OID, der.octet_string(der.octet_string(key_id))))
        return der.sequence(
            _V3, der.integer(serial), self._signature_and_issuer,
            der.sequence(der.time(not_before), der.time(not_after)),
            subject_der, spki_der, der.context(3, der.sequence(extensions)))


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


def link_tbs(signer: Issuer, *, subject_spki_der: bytes, serial: int, not_before: dt.datetime,
             not_after: dt.datetime) -> x509.TbsCertificate:
    """A key rollover link certificate (RFC 4210 4.4): another generation's public key, under the same CA
    name, certified by ``signer``'s key. Self-issued (subject = issuer), so it does not count against
    path lengths (RFC 5280 6.1.4); pathLenConstraint 0: the key it certifies signs end entities only."""
    spki = keys.PublicKeyInfo.load(subject_spki_der)
    exts = [
        _ext("basic_constraints", x509.BasicConstraints({"ca": True, "path_len_constraint": 0}), critical=True),
        _ext("key_usage", x509.KeyUsage({"key_cert_sign", "crl_sign"}), critical=True),
        _ext("key_identifier", core.OctetString(key_identifier(spki))),
        _ext("authority_key_identifier", _aki(signer)),
    ]
    return _tbs(serial, signer.algorithm, signer.name, signer.name, spki, not_before, not_after, exts)


def tls_tbs(issuer: Issuer, *, subject: x509.Name, spki_der: bytes, serial: int, not_before: dt.datetime,
            not_after: dt.datetime, server: bool, dns_names: tuple[str, ...] = (),
            ip_addresses: tuple[str, ...] = ()) -> x509.TbsCertificate:
    """Certificate of a client (id-kp-clientAuth) or of the private listener (id-kp-serverAuth, with
    its names as subjectAltName) issued by the operations CA (RFC 5280 4.2.1.3, 4.2.1.6, 4.2.1.12)."""
    spki = keys.PublicKeyInfo.load(spki_der)
    exts = [
        _ext("basic_constraints", x509.BasicConstraints({"ca": False}), critical=True),
        _ext("key_usage", x509.KeyUsage({"digital_signature", "key_encipherment"} if server
                                        else {"digital_signature"}), critical=True),
        _ext("extended_key_usage", x509.ExtKeyUsageSyntax(["server_auth" if server else "client_auth"])),
        _ext("authority_key_identifier", _aki(issuer)),
        _ext("key_identifier", core.OctetString(key_identifier(spki))),
    ]
    names = [x509.GeneralName(name="dns_name", value=d) for d in dns_names]
    names += [x509.GeneralName(name="ip_address", value=a) for a in ip_addresses]
    if names:
        exts.append(_ext("subject_alt_name", x509.GeneralNames(names)))
    return _tbs(serial, issuer.algorithm, issuer.name, subject, spki, not_before, not_after, exts)


_SHORT = {"country_name": "C", "state_or_province_name": "ST", "locality_name": "L",
          "organization_name": "O", "organizational_unit_name": "OU", "common_name": "CN"}


def _short(rdn) -> str:
    return _SHORT[rdn[0]["type"].native]


def assemble_certificate(tbs_der: bytes, alg: SignatureAlgorithm, signature: bytes) -> bytes:
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue } (RFC 5280 4.1)."""
    return der.sequence(tbs_der, alg.identifier_der, der.bit_string(signature))
