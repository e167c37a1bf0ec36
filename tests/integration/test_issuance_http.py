"""Issuance over HTTP on the real PostgreSQL and SoftHSM token."""
from __future__ import annotations

import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers import certs_by_kind, headers, issue, issue_body


async def test_issue_both_kinds_verifies_against_ca(http, terminal, keys, rt, ca_pem, tmp_path):
    data = await issue(http, terminal, issue_body(keys))
    certs = certs_by_kind(data)
    assert set(certs) == {"signing", "auth"}
    for kind, cert in certs.items():
        ca = x509.load_der_x509_certificate(rt.issuers.current(kind).certificate_der)
        cert.verify_directly_issued_by(ca)
        path = tmp_path / f"{kind}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        res = subprocess.run(["openssl", "verify", "-CAfile", ca_pem[kind], str(path)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
