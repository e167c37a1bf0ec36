"""PKCS#10 checks: parse, proof of possession, key policy."""
from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca_core.csr import check_csr
from ca_core.errors import InvalidRequest


def _csr(key) -> x509.CertificateSigningRequest:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])).sign(key, hashes.SHA256()))


def _pem(csr) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_good_csr_returns_its_public_key(ee_key):
    checked = check_csr(_pem(_csr(ee_key)), field="signing_csr", rsa_key_sizes=(2048,))
    assert checked.key_bits == 2048
    assert checked.spki_der == ee_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("text", ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                                  "Ｘ" * 10])
def test_garbage_is_bad_csr(text):
    with pytest.raises(InvalidRequest) as err:
        check_csr(text, field="auth_csr", rsa_key_sizes=(2048,))
    assert err.value.code == "bad_csr" and err.value.field == "auth_csr"


def test_tampered_csr_fails_proof_of_possession(ee_key):
    der = bytearray(_csr(ee_key).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(InvalidRequest) as err:
        check_csr(pem, field="signing_csr", rsa_key_sizes=(2048,))
    assert err.value.code == "csr_signature_invalid"


def test_ec_key_not_allowed():
    with pytest.raises(InvalidRequest) as err:
        check_csr(_pem(_csr(ec.generate_private_key(ec.SECP256R1()))), field="signing_csr", rsa_key_sizes=(2048,))
    assert err.value.code == "key_not_allowed"


def test_rsa_1024_not_allowed():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidRequest) as err:
        check_csr(_pem(_csr(small)), field="signing_csr", rsa_key_sizes=(2048,))
    assert err.value.code == "key_not_allowed" and "1024" in err.value.message


def test_small_exponent_not_allowed():
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(InvalidRequest) as err:
        check_csr(_pem(_csr(key)), field="signing_csr", rsa_key_sizes=(2048,))
    assert err.value.code == "key_not_allowed"
