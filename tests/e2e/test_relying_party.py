"""A standard relying party (OpenSSL's command line, not code of this project) validates an auth
certificate with revocation checking required, following only the URLs the certificate carries:

1. valid: OCSP (authorityInfoAccess) says good, with and without a nonce; the CRLs
   (cRLDistributionPoints, freshestCRL) say OK, also when OpenSSL downloads the CDP itself;
2. revoked at the window (POST /v1/revocations, key compromise): OCSP says revoked at once, with
   the reason, right after the 201 (no sleep, no publishing);
3. OCSP unreachable: the relying party falls back to the CRLs. The complete partition CRL predates
   the revocation, so alone (and with the delta published before the revocation) it still says OK;
   once the delta CRL is published at the certificate's freshestCRL URL, base + delta say revoked.

The application is served on both listeners: the public one on a free port whose public_base_url is that
port, so the URLs in the certificate (and in the CRLs' issuingDistributionPoint / freshestCRL) point at this
very server; the terminal issues and revokes on the private one (HTTPS, its client certificate).
Every subprocess runs with asyncio.create_subprocess_exec: the event loop keeps serving the app.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from crl_publisher.publisher import Publisher, Target
from shomei.app import make_app
from shomei.embedded import free_port
from shomei.listeners import Listeners, start
from tests.helpers import certs_by_kind, issue, issue_body
from tests.tls_clients import ApiClient


# -- helpers ---------------------------------------------------------------------------------------

async def openssl(*args: str) -> tuple[int, str]:
    """Run the openssl command line without blocking the event loop that serves the application."""
    proc = await asyncio.create_subprocess_exec("openssl", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=dict(os.environ))
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(errors="replace")


def uri_of(names) -> str:
    (uri,) = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    return uri


def urls_in(cert: x509.Certificate) -> dict[str, str]:
    """The revocation and issuer URLs the certificate itself carries."""
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    by_method = {}
    for d in aia:
        by_method.setdefault(d.access_method, []).append(d.access_location)
    (cdp,) = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    (fresh,) = cert.extensions.get_extension_for_class(x509.FreshestCRL).value
    return {"ocsp": uri_of(by_method[AuthorityInformationAccessOID.OCSP]),
            "ca_issuers": uri_of(by_method[AuthorityInformationAccessOID.CA_ISSUERS]),
            "crl": uri_of(cdp.full_name), "delta": uri_of(fresh.full_name)}


async def download(url: str) -> bytes:
    """A plain HTTP GET of a URL exactly as given (no base URL of ours involved)."""
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        body = await resp.read()
        assert resp.status == 200, (url, resp.status, body[:300])
        return body


async def crl_pem(url: str, path: Path) -> x509.CertificateRevocationList:
    """Download a CRL (DER, application/pkix-crl) and store it as PEM for openssl."""
    crl = x509.load_der_x509_crl(await download(url))
    path.write_bytes(crl.public_bytes(Encoding.PEM))
    return crl


async def ocsp(root: Path, cert: Path, url: str, *, nonce: bool = False, timeout: bool = True) -> tuple[int, str]:
    # OpenSSL 3.0 with -timeout retries a refused connection until the timeout; without it, a refused
    # connection fails at once (the hang guard is then asyncio.wait_for in openssl()).
    return await openssl("ocsp", "-issuer", str(root), "-cert", str(cert), "-url", url, "-CAfile", str(root),
                         *(() if nonce else ("-no_nonce",)), *(("-timeout", "20") if timeout else ()))


async def verify_with_crls(root: Path, cert: Path, *crls: Path, extended: bool = False) -> tuple[int, str]:
    args = ["verify", "-CAfile", str(root), "-crl_check", "-use_deltas"]
    if extended:  # full RFC 5280 delta processing (a delta is never taken for the complete CRL)
        args.append("-extended_crl")
    for c in crls:
        args += ["-CRLfile", str(c)]
    return await openssl(*args, str(cert))


def assert_ocsp_good(rc: int, out: str, *, nonce: bool) -> None:
    assert rc == 0, out
    assert "Response verify OK" in out, out
    assert re.search(r"cert\.pem: good\b", out), out
    if nonce:
        # openssl checks the echoed nonce: "WARNING: no nonce in response" or "Nonce Verify error" otherwise
        assert "WARNING: no nonce" not in out and "Nonce Verify error" not in out, out


def assert_ok(rc: int, out: str) -> None:
    assert rc == 0 and out.strip().endswith("cert.pem: OK"), out


def assert_revoked(rc: int, out: str) -> None:
    assert rc != 0, out
    assert "certificate revoked" in out and "cert.pem: OK" not in out, out


# -- the served application ------------------------------------------------------------------------

@pytest.fixture
async def served(rt, tls, terminal):
    """The whole application on real loopback ports, with public_base_url = the public listener's; a
    client of the private listener (the terminal's certificate) and the public base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = rt.cfg.server.replace(public_base_url=base, host="127.0.0.1", port=port, private_host="127.0.0.1",
                                   private_port=0)
    rt2 = dataclasses.replace(rt, cfg=rt.cfg.replace(server=server))
    listeners = Listeners()
    runner = web.AppRunner(make_app(rt2, listeners))
    await runner.setup()
    client = None
    try:
        public_url, private_url = await start(runner, rt2.cfg, listeners, tls, reuse_port=False)
        assert public_url == base, public_url
        client = ApiClient(private_url, default=terminal.ssl)
        yield rt2, client, base
    finally:
        if client is not None:
            await client.close()
        await runner.cleanup()


# -- the test --------------------------------------------------------------------------------------

async def test_openssl_relying_party_follows_the_certificate_urls(served, terminal, keys, tmp_path):
    rt2, client, base = served
    cert = certs_by_kind(await issue(client, terminal, issue_body(keys, kinds=("auth",))))["auth"]
    cert_path = tmp_path / "cert.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))

    # The URLs come from the certificate, and point at this server.
    urls = urls_in(cert)
    issuer = rt2.issuers.current("auth")
    assert urls["ocsp"] == f"{base}/ocsp"
    assert urls["ca_issuers"] == f"{base}/ca/auth/{issuer.key_id.hex()}.crt"
    m = re.fullmatch(re.escape(base) + r"/crl/auth/(g\d+-p\d+)\.crl", urls["crl"])
    assert m, urls
    assert urls["delta"] == f"{base}/crl/auth/{m.group(1)}-delta.crl"

    # The issuer comes from caIssuers; the CA is a self-signed root, the relying party's trust anchor.
    ca = x509.load_der_x509_certificate(await download(urls["ca_issuers"]))
    assert ca.public_bytes(Encoding.DER) == issuer.certificate_der
    assert ca.subject == ca.issuer == cert.issuer
    root = tmp_path / "root.pem"
    root.write_bytes(ca.public_bytes(Encoding.PEM))

    # Publish the certificate's partition CRL (and its delta) as the scheduler would; the partition
    # is the one the CDP names. Publishing through this server's runtime gives the CRLs an
    # issuingDistributionPoint equal to the certificate's CDP (OpenSSL checks that).
    pub = Publisher.from_runtime(rt2)
    base_targets = await pub.targets(issuer, "base", None, full=False)
    mine = [t for t in base_targets if f"{base}/crl/{t.path}" == urls["crl"]]
    assert len(mine) == 1, (urls["crl"], [t.path for t in base_targets])
    scope = mine[0].scope
    for outcome in await pub.publish_many(base_targets):
        assert outcome.published is not None, outcome.skipped
    early_delta = (await pub.publish(Target(issuer, scope, "delta"))).published
    assert early_delta is not None

    # -- 1. valid ---------------------------------------------------------------------------------
    rc, out = await ocsp(root, cert_path, urls["ocsp"])
    assert_ocsp_good(rc, out, nonce=False)
    rc, out = await ocsp(root, cert_path, urls["ocsp"], nonce=True)
    assert_ocsp_good(rc, out, nonce=True)

    base_pem, delta_pem = tmp_path / "base.pem", tmp_path / "delta.pem"
    base_crl = await crl_pem(urls["crl"], base_pem)
    old_delta = tmp_path / "delta-before.pem"
    delta_crl = await crl_pem(urls["delta"], old_delta)
    assert base_crl.is_signature_valid(ca.public_key()) and delta_crl.is_signature_valid(ca.public_key())
    assert delta_crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == \
        base_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert cert.serial_number not in {r.serial_number for r in base_crl}
    for extended in (False, True):
        assert_ok(*await verify_with_crls(root, cert_path, base_pem, extended=extended))
        assert_ok(*await verify_with_crls(root, cert_path, base_pem, old_delta, extended=extended))
    # OpenSSL downloads the certificate's CDP itself (OpenSSL 3.0 `verify -crl_download`; it fetches
    # the cRLDistributionPoints URL only, not freshestCRL).
    rc, out = await openssl("verify", "-crl_check", "-crl_download", "-CAfile", str(root), str(cert_path))
    assert_ok(rc, out)

    # -- 2. revoked at the window: OCSP says so at once ------------------------------------------
    resp = await client.post("/v1/revocations", **terminal.auth(),
                             json={"request_id": f"rp-{os.urandom(8).hex()}", "serial": format(cert.serial_number, "x"),
                                   "reason": "key_compromise"})
    body = await resp.json()
    assert resp.status == 201, body
    rc, out = await ocsp(root, cert_path, urls["ocsp"])  # no sleep: right after the answer
    assert rc == 0 and "Response verify OK" in out, out
    assert re.search(r"cert\.pem: revoked\b", out) and "Reason: keyCompromise" in out, out
    rc, out = await ocsp(root, cert_path, urls["ocsp"], nonce=True)
    assert rc == 0 and "Response verify OK" in out and "WARNING: no nonce" not in out, out
    assert re.search(r"cert\.pem: revoked\b", out) and "Reason: keyCompromise" in out, out

    # -- 3. OCSP unreachable: the relying party falls back to the CRLs ---------------------------
    closed = free_port()  # nobody listens there
    parts = urllib.parse.urlsplit(urls["ocsp"])
    unreachable = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.hostname}:{closed}"))
    rc, out = await ocsp(root, cert_path, unreachable, timeout=False)
    assert rc != 0 and "Connection refused" in out, out
    assert "good" not in out and "revoked" not in out, out

    # Before the delta is published: the complete CRL predates the revocation and still says valid,
    # alone and with the delta currently at the freshestCRL URL (also published before it).
    base_crl = await crl_pem(urls["crl"], base_pem)
    assert cert.serial_number not in {r.serial_number for r in base_crl}
    assert_ok(*await verify_with_crls(root, cert_path, base_pem))
    await crl_pem(urls["delta"], delta_pem)
    assert_ok(*await verify_with_crls(root, cert_path, base_pem, delta_pem))

    # The delta is published: base + delta (both as the certificate names them) say revoked.
    outcome = await pub.publish(Target(issuer, scope, "delta"))
    assert outcome.published is not None, outcome.skipped
    assert outcome.published.number > early_delta.number
    delta_crl = await crl_pem(urls["delta"], delta_pem)
    entry = delta_crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    base_crl = await crl_pem(urls["crl"], base_pem)  # unchanged: still the base of the delta
    assert cert.serial_number not in {r.serial_number for r in base_crl}
    for extended in (False, True):
        assert_ok(*await verify_with_crls(root, cert_path, base_pem, extended=extended))
        assert_revoked(*await verify_with_crls(root, cert_path, base_pem, delta_pem, extended=extended))
