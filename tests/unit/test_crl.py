"""ca_core.crl: the streaming CRL encoder, checked with cryptography's strict parser (no database,
no token: an in-memory key stands in for the token)."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import CRLEntryExtensionOID, NameOID

from ca_core import crl as crl_core, der
from ca_core.algorithms import algorithm_for
from ca_core.ca import Issuer
from ca_core.revocation import Reason, encode_entry

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.timezone.utc)
URL = "http://127.0.0.1:8080/crl/signing/g1-p0.crl"


def _issuer(key, key_type: str) -> Issuer:
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "JPKI-TEST")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return Issuer(db_id=1, ca_id="signing", generation=1, key_label="k", algorithm=algorithm_for(key_type),
                  certificate_der=cert.public_bytes(serialization.Encoding.DER))


@pytest.fixture(scope="module")
def rsa_ca():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, _issuer(key, "rsa2048")


@pytest.fixture(scope="module")
def ec_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _issuer(key, "ec-p256")


def _signer(key):
    def sign(tbs: bytes) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return sign


def _spec(issuer, **kw) -> crl_core.CRLSpec:
    base = dict(issuer=issuer, number=7, this_update=NOW, next_update=NOW + dt.timedelta(hours=48))
    base.update(kw)
    return crl_core.CRLSpec(**base)


def _entries(n: int) -> list[bytes]:
    reasons = [Reason.unspecified, Reason.key_compromise, Reason.certificate_hold, Reason.affiliation_changed]
    return [encode_entry((1 << 120) + i * 7919, NOW - dt.timedelta(hours=1), reasons[i % 4]) for i in range(n)]


def _parse(der: bytes, issuer: Issuer) -> x509.CertificateRevocationList:
    crl = x509.load_der_x509_crl(der)
    ca = x509.load_der_x509_certificate(issuer.certificate_der)
    assert crl.is_signature_valid(ca.public_key())
    return crl


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 40, 1500, 20000])
def test_lengths_for_any_number_of_entries(rsa_ca, n):
    """Header lengths computed from count and size give valid DER across the 1-, 2- and 3-octet
    length boundaries (128, 256, 65536 octets of entries)."""
    key, issuer = rsa_ca
    entries = _entries(n)
    crl = _parse(crl_core.assemble(_spec(issuer), entries, _signer(key)), issuer)
    assert len(crl) == n
    assert [r.serial_number for r in crl] == [(1 << 120) + i * 7919 for i in range(n)]
    assert crl_core.tbs_length(_spec(issuer), n, sum(map(len, entries))) == len(crl.tbs_certlist_bytes)


def test_no_entries_means_no_revoked_certificates_field(rsa_ca):
    key, issuer = rsa_ca
    header = crl_core.tbs_header(_spec(issuer), 0, 0)
    assert not header.endswith(b"\x30\x00")  # RFC 5280 5.1.2.6: absent, not an empty SEQUENCE
    assert len(_parse(crl_core.assemble(_spec(issuer), [], _signer(key)), issuer)) == 0


def test_header_and_extensions_of_a_partition_crl(rsa_ca):
    key, issuer = rsa_ca
    spec = _spec(issuer, idp_url=URL, freshest_url=URL.replace(".crl", "-delta.crl"))
    crl = _parse(crl_core.assemble(spec, _entries(3), _signer(key)), issuer)
    assert crl.last_update_utc == NOW and crl.next_update_utc == NOW + dt.timedelta(hours=48)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.full_name == [x509.UniformResourceIdentifier(URL)]
    fresh = crl.extensions.get_extension_for_class(x509.FreshestCRL)
    assert not fresh.critical
    assert fresh.value[0].full_name == [x509.UniformResourceIdentifier(URL.replace(".crl", "-delta.crl"))]
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == issuer.key_id
    assert crl.issuer == x509.load_der_x509_certificate(issuer.certificate_der).subject


def test_delta_crl_indicator_is_critical_and_names_the_base(rsa_ca):
    key, issuer = rsa_ca
    entries = [crl_core.remove_from_crl_entry(12345, NOW - dt.timedelta(days=1))]
    crl = _parse(crl_core.assemble(_spec(issuer, number=9, delta_base=7, idp_url=URL), entries, _signer(key)), issuer)
    ind = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert ind.critical and ind.value.crl_number == 7
    reason = crl[0].extensions.get_extension_for_oid(CRLEntryExtensionOID.CRL_REASON).value.reason
    assert reason == x509.ReasonFlags.remove_from_crl


def test_ecdsa_signature_of_any_length(ec_ca):
    key, issuer = ec_ca
    for _ in range(8):  # ECDSA-Sig-Value lengths vary; the outer length follows the signature
        _parse(crl_core.assemble(_spec(issuer), _entries(2), _signer(key)), issuer)
    assert crl_core.max_suffix_length(issuer.algorithm) >= len(crl_core.signed_suffix(issuer.algorithm, b"\x00" * 72))


@pytest.mark.parametrize("bad", [
    dict(number=-1), dict(number=1 << 160), dict(next_update=NOW), dict(delta_base=7),
    dict(delta_base=3, freshest_url=URL)])
def test_spec_rules(rsa_ca, bad):
    with pytest.raises(ValueError):
        _spec(rsa_ca[1], **bad)


def test_der_length():
    assert der.length(0) == b"\x00"
    assert der.length(127) == b"\x7f"
    assert der.length(128) == b"\x81\x80"
    assert der.length(256) == b"\x82\x01\x00"
    assert der.length(1 << 24) == b"\x84\x01\x00\x00\x00"


@pytest.mark.parametrize("delta", [False, True])
def test_read_info_skips_the_entries(rsa_ca, delta):
    key, issuer = rsa_ca
    spec = _spec(issuer, number=11, delta_base=10 if delta else None, idp_url=URL)
    der = crl_core.assemble(spec, _entries(3000), _signer(key))
    reads = []

    def read_at(offset, size):
        reads.append((offset, size))
        return der[offset:offset + size]

    info = crl_core.read_info(read_at)
    assert (info.this_update, info.next_update, info.number) == (NOW, NOW + dt.timedelta(hours=48), 11)
    assert info.delta_base == (10 if delta else None)
    assert sum(size for _o, size in reads) < len(der)


def test_read_info_rejects_garbage():
    with pytest.raises(ValueError):
        crl_core.read_info(lambda o, n: b"\x30\x03\x02\x01"[o:o + n])
