"""The two listeners with real TLS handshakes. The private one refuses a connection without a client
certificate, with an expired one or one of a foreign CA at the handshake; a disabled client's or a
rotated-away certificate gets 403; a feed certificate on terminal endpoints 403. Nothing is recorded by
any of them. The public one serves relying parties only: terminal, feed and operations endpoints are
404 there, and its health says ok or not and nothing more."""
from __future__ import annotations

import dataclasses
import datetime as dt
import ssl

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_core.clock import FixedClock
from shomei.credentials import issue_client_certificate
from tests.helpers import issue_body
from tests.tls_clients import client_context, make_credential


async def _recorded(rt) -> tuple[int, int, int]:
    async with rt.pool.acquire() as conn:
        return (await conn.fetchval("SELECT count(*) FROM certificate"),
                await conn.fetchval("SELECT count(*) FROM revocation"),
                await conn.fetchval("SELECT count(*) FROM audit_log"))


async def _refused_at_handshake(http, ctx: ssl.SSLContext) -> None:
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        async with aiohttp.ClientSession() as session:  # a fresh connection each time
            async with session.get(http.make_url("/healthz"), ssl=ctx) as resp:
                await resp.read()


def _write(tmp_path, name: str, cert: x509.Certificate, key) -> tuple:
    crt, pem_key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return crt, pem_key


def _foreign_client(tmp_path, name: str, serial: int) -> tuple:
    """A client certificate from a CA of its own, with the same subject shape and even a serial the
    operations CA issued: only the signature tells them apart."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shomei operations CA")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _write(tmp_path, name, cert, key)


async def test_handshake_refusals_record_nothing(http, rt, tls, terminal, tmp_path):
    before = await _recorded(rt)
    await _refused_at_handshake(http, client_context(tls.client_ca))  # no client certificate
    crt, key = _foreign_client(tmp_path, terminal.client.name, x509.load_pem_x509_certificate(
        terminal.cert_file.read_bytes()).serial_number)
    await _refused_at_handshake(http, client_context(tls.client_ca, crt, key))
    # expired: a real certificate of the operations CA whose validity ended yesterday
    past = dataclasses.replace(rt, clock=FixedClock(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)),
                               cfg=rt.cfg.replace(server=rt.cfg.server.replace(client_certificate_days=1)))
    issued = await issue_client_certificate(past, terminal.client)
    (tmp_path / "old.crt").write_bytes(issued.certificate_pem)
    (tmp_path / "old.key").write_bytes(issued.key_pem)
    assert x509.load_pem_x509_certificate(issued.certificate_pem).not_valid_after_utc < dt.datetime.now(dt.timezone.utc)
    await _refused_at_handshake(http, client_context(tls.client_ca, tmp_path / "old.crt", tmp_path / "old.key"))
    resp = await http.post("/v1/certificates", json={}, **terminal.auth())  # the terminal's own still works
    assert resp.status == 400
    after = await _recorded(rt)
    assert after[:2] == before[:2]
    assert after[2] == before[2] + 1  # the one audit record is of issuing the expired certificate above


async def test_disabled_client_and_wrong_kind_get_403_and_change_nothing(http, rt, keys, stack_dir, feed, tls):
    from shomei.credentials import disable_client

    cred = await make_credential(rt, stack_dir / "clients", kind="terminal", municipality_code="131016")
    resp = await http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)), **cred.auth())
    assert resp.status == 201
    before = await _recorded(rt)
    resp = await http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)), **feed.auth("clerk-01"))
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "wrong_client_kind"
    assert await disable_client(rt, cred.client.name)
    for _ in range(50):
        resp = await http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)), **cred.auth())
        if resp.status == 403:
            break
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "client_not_authorised"
    after = await _recorded(rt)
    assert after[:2] == before[:2] and after[2] == before[2] + 1  # the client_disabled record only


async def test_public_listener_serves_relying_parties_only(public, http, rt):
    for method, path in (("POST", "/v1/certificates"), ("POST", "/v1/revocations"), ("POST", "/v1/holds"),
                         ("POST", "/v1/holds/release"), ("POST", "/v1/residency-events"), ("GET", "/metrics")):
        resp = await public.request(method, path, json={})
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "private_listener_only", path
    resp = await public.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}  # names no key, no worker
    for path in ("/ca", "/ca/auth.crt", "/ca/signing.crt"):
        assert (await public.get(path)).status == 200, path
    resp = await public.post("/ocsp", data=b"\x30\x00", headers={"Content-Type": "application/ocsp-request"})
    assert resp.status == 200 and resp.content_type == "application/ocsp-response"  # malformedRequest, in OCSP
    detailed = await (await http.get("/healthz")).json()
    assert detailed["checks"]["token"] == "ok" and "cas" in detailed["checks"]
    assert "shomei_" in await (await http.get("/metrics")).text()


async def test_server_certificate_is_for_the_configured_names(tls):
    chain = tls.cert.read_bytes()
    leaf = x509.load_pem_x509_certificates(chain)[0]
    ops = x509.load_pem_x509_certificate(tls.client_ca.read_bytes())
    leaf.verify_directly_issued_by(ops)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [x509.ExtendedKeyUsageOID.SERVER_AUTH])
    ctx = client_context(tls.client_ca)  # hostname and chain checked as a terminal's TLS library does
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


async def test_a_client_certificate_is_not_accepted_from_a_header(http, public, rt, terminal, keys):
    """Without a configured proxy nobody's X-Client-Certificate-Serial is believed."""
    serial = format(x509.load_pem_x509_certificate(terminal.cert_file.read_bytes()).serial_number, "x")
    resp = await public.post("/v1/certificates", json=issue_body(keys), headers={
        "X-Client-Certificate-Serial": serial, "X-Operator-Id": "clerk-01"})
    assert resp.status == 404


@pytest.mark.parametrize("trusted,accepted", [(("127.0.0.1",), True), (("192.0.2.1",), False)])
async def test_behind_a_tls_terminating_proxy(rt, tls, terminal, trusted, accepted):
    """server.private_tls = false: the proxy verified the certificate and passes its serial; the header is
    believed from the configured proxy addresses only."""
    from tests.tls_clients import TestServers

    cfg = rt.cfg.replace(server=rt.cfg.server.replace(private_tls=False, trusted_proxies=trusted))
    servers = await TestServers.start(dataclasses.replace(rt, cfg=cfg), tls)
    try:
        assert str(servers.private.base).startswith("http://")
        serial = format(x509.load_pem_x509_certificate(terminal.cert_file.read_bytes()).serial_number, "X")
        resp = await servers.private.post("/v1/certificates", json={}, headers={
            "X-Client-Certificate-Serial": ":".join(serial[i:i + 2] for i in range(0, len(serial), 2)),
            "X-Operator-Id": "clerk-01"})
        body = await resp.json()
        if accepted:
            assert resp.status == 400 and body["error"]["code"] == "missing_field"  # past authentication
        else:
            assert resp.status == 403 and body["error"]["code"] == "client_certificate_required"
        resp = await servers.private.post("/v1/certificates", json={}, headers={"X-Operator-Id": "clerk-01"})
        assert resp.status == 403
    finally:
        await servers.close()


async def test_a_thousand_idle_connections(public, http, terminal, keys, rt):
    """1,000 connections that connect and send nothing (half on each listener, the private ones never
    starting their TLS handshake) while others are served: every answer arrives, none is 5xx."""
    import asyncio
    import time

    from tests.ocsp_helpers import get_path, request_der

    idle = []
    for base in (public.make_url("/"), http.make_url("/")):
        for _ in range(500):
            _reader, writer = await asyncio.open_connection(base.host, base.port)
            idle.append(writer)
    try:
        data = await (await http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)), **terminal.auth())).json()
        cert = x509.load_pem_x509_certificate(data["certificates"][0]["certificate"].encode())
        issuer = x509.load_der_x509_certificate(rt.issuers.current("auth").certificate_der)
        path = get_path(request_der(cert, issuer))
        timings, statuses = [], []
        for i in range(40):
            started = time.perf_counter()
            if i % 4 == 0:
                resp = await http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)), **terminal.auth())
            else:
                resp = await public.get(path)
            await resp.read()
            timings.append(time.perf_counter() - started)
            statuses.append(resp.status)
        assert all(s in (200, 201) for s in statuses), statuses
        timings.sort()
        print(f"\nwith 1,000 idle connections: 40 requests, median {timings[20] * 1000:.1f} ms, "
              f"max {timings[-1] * 1000:.1f} ms")
        assert timings[-1] < 5
    finally:
        for writer in idle:
            writer.close()
