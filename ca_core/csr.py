"""PKCS#10 requests (RFC 2986): parse, check proof of possession and the key, return the SPKI."""
from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import InvalidRequest, PolicyViolation

MAX_CSR_PEM = 16384


@dataclass(frozen=True)
class CheckedCSR:
    spki_der: bytes
    key_id: bytes  # subjectKeyIdentifier (RFC 5280 4.2.1.2 method 1)
    key_bits: int


def check_csr(pem: str, *, field: str, rsa_key_sizes: tuple[int, ...]) -> CheckedCSR:
    """Parse a PEM CSR, verify its self-signature (proof of possession) and its key.

    Raises InvalidRequest with code bad_csr, csr_signature_invalid or key_not_allowed.
    """
    if not isinstance(pem, str) or not pem.strip():
        raise InvalidRequest(f"{field} must be a PEM certificate request", field=field, code="bad_csr")
    if len(pem) > MAX_CSR_PEM:
        raise InvalidRequest(f"{field} is larger than {MAX_CSR_PEM} characters", field=field, code="bad_csr")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
        key = csr.public_key()
    except (ValueError, UnicodeEncodeError, TypeError) as exc:
        raise InvalidRequest(f"{field} is not a valid PEM PKCS#10 request ({type(exc).__name__})",
                             field=field, code="bad_csr") from None
    except Exception:  # unsupported key algorithms surface as other exception types
        raise PolicyViolation(f"{field}: the public key type is not allowed; RSA keys only",
                             field=field, code="key_not_allowed") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise PolicyViolation(f"{field}: the public key type is not allowed; RSA keys only",
                             field=field, code="key_not_allowed")
    if key.key_size not in rsa_key_sizes:
        raise PolicyViolation(f"{field}: RSA-{key.key_size} is not allowed; allowed sizes: "
                             f"{', '.join(map(str, rsa_key_sizes))}", field=field, code="key_not_allowed")
    e = key.public_numbers().e
    if e < 65537 or e % 2 == 0:
        raise PolicyViolation(f"{field}: RSA public exponent must be odd and at least 65537",
                             field=field, code="key_not_allowed")
    try:
        valid = csr.is_signature_valid
    except Exception:
        valid = False
    if not valid:
        raise PolicyViolation(f"{field}: the request's signature does not verify (no proof of possession)",
                             field=field, code="csr_signature_invalid")
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return CheckedCSR(spki_der=spki, key_id=x509.SubjectKeyIdentifier.from_public_key(key).digest,
                      key_bits=key.key_size)
