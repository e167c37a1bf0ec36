"""Issued certificates linted with pkilint's RFC 5280 certificate linter (the validator set of its
`lint_pkix_cert lint` command), a third-party linter that shares no code with this project.

pkilint reports no ERROR or FATAL finding on either profile. Findings of lower severity are printed
(`pytest -s` shows them); at the time of writing they are:
  NOTICE pkix.certificate_policies_policy_has_qualifier   -- the policy carries a CPS URI qualifier
  INFO   pkix.subject_key_identifier_method_1_identified   -- SKI is the SHA-1 of the public key
The JPKI otherName values in the signing certificate's subjectAltName and the critical
certificatePolicies extension draw no finding from the RFC 5280 linter."""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID
from pkilint import loader
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity as Severity

from tests.helpers import certs_by_kind, issue, issue_body


def _rfc5280_validator():
    # the validator container that pkilint's `lint_pkix_cert lint` builds
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def _lint(der: bytes, label: str) -> list[tuple[Severity, str, str, str]]:
    """All findings as (severity, code, node path, message)."""
    doc = loader.load_der_certificate(der, label)
    return [(fd.finding.severity, fd.finding.code, result.node.path, fd.message or "")
            for result in _rfc5280_validator().validate(doc.root)
            for fd in result.finding_descriptions]


def _errors(findings):
    return [f for f in findings if f[0] <= Severity.ERROR]  # FATAL (0) and ERROR (1)


def _print(label, findings):
    for sev, code, path, msg in findings:
        print(f"pkilint {label}: {sev.name} {code} at {path}{': ' + msg if msg else ''}")


def test_linter_reports_errors_on_a_broken_certificate(keys):
    """Guard against a vacuous pass: an empty subject without subjectAltName breaks RFC 5280 4.1.2.6."""
    key = keys.new()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    findings = _lint(cert.public_bytes(Encoding.DER), "broken.der")
    _print("broken", findings)
    assert _errors(findings)


async def test_issued_certificates_have_no_rfc5280_errors(http, terminal, keys):
    data = await issue(http, terminal, issue_body(keys))
    certs = certs_by_kind(data)
    # the profile features a linter might object to are really present in what was linted
    assert certs["signing"].extensions.get_extension_for_oid(ExtensionOID.CERTIFICATE_POLICIES).critical
    sans = certs["signing"].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {o.type_id.dotted_string for o in sans if isinstance(o, x509.OtherName)} >= {
        f"1.2.392.200149.8.5.5.{i}" for i in range(1, 7)}
    for kind in ("signing", "auth"):
        findings = _lint(certs[kind].public_bytes(Encoding.DER), f"{kind}.der")
        _print(kind, findings)
        assert not _errors(findings), f"{kind}: {_errors(findings)}"
