"""Hostile input at the edges: JSON nested beyond any use, an OCSP request whose body arrives in two
TCP segments, a body that never finishes arriving, and slow senders that must not take the online
window's slots from others."""
from __future__ import annotations

import asyncio

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from tests.helpers import issue, issue_body
from tests.ocsp_helpers import check_response, request_der


async def _raw(public, payload_parts: list[bytes], pause: float = 0.05) -> bytes:
    """Send an HTTP request in several writes (several TCP segments) and read the whole answer."""
    url = public.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    for part in payload_parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(pause)
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


async def test_deeply_nested_json_is_400_not_500(http, terminal):
    body = b"[" * 30000 + b"]" * 30000  # 60 KB: under the size limit, nested beyond any parser's stack
    resp = await http.post("/v1/certificates", data=body, ssl=terminal.ssl,
                           headers={"X-Operator-Id": terminal.operator, "Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "malformed_json"


async def test_a_body_that_never_finishes_is_408(http, terminal, monkeypatch):
    import plumbing.http

    monkeypatch.setattr(plumbing.http, "BODY_READ_SECONDS", 0.5)
    head = (b"POST /v1/revocations HTTP/1.1\r\nHost: x\r\n"
            b"X-Operator-Id: clerk-01\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    url = http.make_url("/")  # the private listener: TLS with the terminal's certificate
    reader, writer = await asyncio.open_connection(url.host, url.port, ssl=terminal.ssl)
    writer.write(head + b'{"request_id": ')  # and the rest never comes
    await writer.drain()
    answer = b""
    while b"request_timeout" not in answer:  # the server may linger on the connection after answering
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        answer += chunk
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[:200]


async def test_ocsp_post_body_split_in_two_segments(http, public, terminal, keys, rt):
    data = await issue(http, terminal, issue_body(keys, kinds=("auth",)))
    cert = x509.load_pem_x509_certificate(data["certificates"][0]["certificate"].encode())
    issuer = x509.load_der_x509_certificate(rt.issuers.current("auth").certificate_der)
    der = request_der(cert, issuer)
    head = (f"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
            f"Content-Length: {len(der)}\r\nConnection: close\r\n\r\n").encode()
    answer = await _raw(public, [head + der[:10], der[10:]])
    body = answer.split(b"\r\n\r\n", 1)[1]
    resp = check_response(body, issuer.public_bytes(serialization.Encoding.DER))
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD


async def test_slow_senders_do_not_take_the_online_windows_slots(public, rt):
    from revocation.http import ENDPOINTS

    window = public.app[ENDPOINTS].online_window
    slots = rt.cfg.revocation.online_max_in_flight
    head = (b"POST /v1/online/validity-checks HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs7-mime\r\n"
            b"Content-Length: 1000\r\n\r\n")
    slow = []
    for _ in range(slots + 8):  # more slow senders than slots: each sends headers, then nothing
        url = public.make_url("/")
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(head)
        await writer.drain()
        slow.append(writer)
    await asyncio.sleep(0.2)
    assert window.in_flight == 0  # nobody holds a slot while their body has not arrived
    resp = await public.post("/v1/online/validity-checks", data=b"\x30\x00",
                           headers={"Content-Type": "application/pkcs7-mime"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "malformed"  # answered, not busy
    for writer in slow:
        writer.close()


async def test_fresh_nonce_signatures_are_limited_per_client(rt, terminal, keys, http):
    """Beyond its rate a client's nonces are not honoured: it gets the cached answer (RFC 8954 lets the
    responder leave the nonce out), so nobody can keep the token signing; every answer is still good."""
    import dataclasses
    import os

    from aiohttp.test_utils import TestClient, TestServer

    from shomei.app import make_app

    data = await issue(http, terminal, issue_body(keys, kinds=("auth",)))
    cert = x509.load_pem_x509_certificate(data["certificates"][0]["certificate"].encode())
    issuer = x509.load_der_x509_certificate(rt.issuers.current("auth").certificate_der)
    rt2 = dataclasses.replace(rt, cfg=rt.cfg.replace(ocsp=rt.cfg.ocsp.replace(nonce_signatures_per_client=2)))
    client = TestClient(TestServer(make_app(rt2)))
    await client.start_server()
    try:
        echoed = 0
        for _ in range(20):
            nonce = os.urandom(16)
            resp = await client.post("/ocsp", data=request_der(cert, issuer, nonce=nonce),
                                     headers={"Content-Type": "application/ocsp-request"})
            answer = check_response(await resp.read(), issuer.public_bytes(serialization.Encoding.DER))
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
            try:
                echoed += answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
            except x509.ExtensionNotFound:
                pass
        assert 4 <= echoed <= 6  # the burst (twice the rate), and what refilled meanwhile
    finally:
        await client.close()
