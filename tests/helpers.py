"""Test helpers: resident data, CSRs, and issuing through the API."""
from __future__ import annotations

import datetime as dt
import itertools
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

_counter = itertools.count(1)


class KeyPool:
    """Generates RSA keys on demand and keeps them; key generation is the slow part of CSR tests."""

    def __init__(self):
        self._keys = []

    def new(self, bits: int = 2048):
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self._keys.append(key)
        return key


def csr_pem(key, cn: str = "card") -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def resident_code() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(11))


def resident(**over) -> dict:
    data = {
        "name": "山田　花子",
        "name_substitutes": "00000",
        "address": "東京都千代田区千代田１番１号",
        "address_substitutes": "00000000000000",
        "birth_date": "319850412",
        "sex": "2",
    }
    data.update(over)
    return data


def issue_body(keys, *, kinds=("signing", "auth"), request_id: str | None = None, code: str | None = None,
               **over) -> dict:
    body = {
        "request_id": request_id or f"req-{next(_counter)}-{secrets.token_hex(4)}",
        "municipality_code": "131016",
        "resident_code": code or resident_code(),
        "resident": resident(),
        "card_expires_on": (dt.date.today() + dt.timedelta(days=3650)).isoformat(),
    }
    for kind in kinds:
        body[f"{kind}_csr"] = csr_pem(keys.new())
    body.update(over)
    return body


async def issue(http, credential, body: dict, expect: int = 201) -> dict:
    """Issue through the private listener as ``credential`` (tests.tls_clients.Credential)."""
    resp = await http.post("/v1/certificates", json=body, **credential.auth())
    data = await resp.json()
    assert resp.status == expect, data
    return data


def certs_by_kind(data: dict) -> dict:
    return {c["kind"]: x509.load_pem_x509_certificate(c["certificate"].encode()) for c in data["certificates"]}
