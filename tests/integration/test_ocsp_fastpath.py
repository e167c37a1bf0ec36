"""OCSP's two plain request shapes on the public listener are answered without the web framework
(ocsp_responder.fastpath); everything else on the same connection goes to aiohttp. Checked on the wire:
answers in order for pipelined requests, a connection handed over mid-way, a request arriving an octet
at a time, Connection: close, conditional and chunked requests, nonce answers, and the same headers as
aiohttp's handler."""
from __future__ import annotations

import asyncio
import base64
import os
import urllib.parse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from tests.helpers import certs_by_kind, issue, issue_body
from tests.ocsp_helpers import check_response, request_der, status_of


@pytest.fixture
async def one(http, terminal, keys, rt):
    cert = certs_by_kind(await issue(http, terminal, issue_body(keys, kinds=("auth",))))["auth"]
    ca = x509.load_der_x509_certificate(rt.issuers.current("auth").certificate_der)
    return cert, ca, ca.public_bytes(Encoding.DER)


def _post(der: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: %d\r\n" % len(der) + extra + b"\r\n" + der)


def _get(der: bytes, extra: bytes = b"") -> bytes:
    path = "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


async def _read(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


@pytest.fixture
async def wire(public):
    url = urllib.parse.urlsplit(str(public.make_url("")))
    opened = []

    async def connect():
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        opened.append(writer)
        return reader, writer
    yield connect
    for w in opened:
        w.close()


async def test_pipelined_requests_are_answered_in_order(wire, one):
    cert, ca, ca_der = one
    der = request_der(cert, ca)
    nonce = os.urandom(16)
    reader, writer = await wire()
    writer.write(_post(der) + _get(der) + _post(request_der(cert, ca, nonce=nonce)) + _get(der))
    answers = [await _read(reader) for _ in range(4)]
    for status, headers, body in answers:
        assert status == 200 and headers["content-type"] == "application/ocsp-response" and "date" in headers
        resp = check_response(body, ca_der)
        assert resp.serial_number == cert.serial_number and resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    # The nonce answer is signed for that request and never cached; the others carry RFC 5019 headers.
    nonce_answer = ocsp.load_der_ocsp_response(answers[2][2])
    assert nonce_answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert answers[2][1]["cache-control"] == "no-cache, no-store"
    for status, headers, _body in (answers[0], answers[1], answers[3]):
        assert "max-age=" in headers["cache-control"] and headers["etag"] and headers["last-modified"]
    assert answers[1][2] == answers[3][2]  # the second GET from memory


async def test_other_requests_hand_the_connection_to_aiohttp(wire, one):
    cert, ca, ca_der = one
    der = request_der(cert, ca)
    reader, writer = await wire()
    writer.write(_get(der))
    first = await _read(reader)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + _get(der) + _get(der, b"If-None-Match: "
                                                                        + first[1]["etag"].encode() + b"\r\n"))
    health, again, conditional = [await _read(reader) for _ in range(3)]
    assert health[0] == 200 and b"ok" in health[2]
    assert again[0] == 200 and check_response(again[2], ca_der).serial_number == cert.serial_number
    assert again[1]["etag"] == first[1]["etag"] and again[1]["last-modified"] == first[1]["last-modified"]
    assert conditional[0] == 304 and conditional[2] == b""


async def test_an_octet_at_a_time_and_connection_close(wire, one):
    cert, ca, ca_der = one
    reader, writer = await wire()
    for octet in _post(request_der(cert, ca), b"Connection: close\r\n"):
        writer.write(bytes([octet]))
        await writer.drain()
    status, headers, body = await _read(reader)
    assert status == 200 and headers["connection"] == "close"
    assert check_response(body, ca_der).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server


@pytest.mark.parametrize("request_bytes, expect", [
    # chunked: aiohttp reads the body and answers it
    (lambda der: b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(der) + der + b"\r\n0\r\n\r\n", "good"),
    (lambda der: _post(der).replace(b"application/ocsp-request", b"text/plain"), "malformed_request"),
    (lambda der: _post(b"\x30\x03\x02\x01\x01"), "malformed_request"),
    (lambda der: b"GET /ocsp/%%%zz HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_request"),
    (lambda der: b"PUT /ocsp HTTP/1.0\r\nContent-Length: 0\r\n\r\n", 405),
    (lambda der: b"\x16\x03\x01 garbage\r\n\r\n", 400),
    (lambda der: _get(der).replace(b"Host: x\r\n", b""), 400),  # HTTP/1.1 requires Host
])
async def test_unusual_requests_get_the_framework_answer(wire, one, request_bytes, expect):
    cert, ca, ca_der = one
    reader, writer = await wire()
    writer.write(request_bytes(request_der(cert, ca)))
    status, _headers, body = await _read(reader)
    if isinstance(expect, int):
        assert status == expect
    elif expect == "good":
        assert status == 200 and check_response(body, ca_der).certificate_status == ocsp.OCSPCertStatus.GOOD
    else:
        assert status == 200 and status_of(body) == expect


async def test_hostile_heads_never_break_the_listener(wire, one, caplog):
    """Random and mangled request heads: whatever the fast path or aiohttp make of them, the listener
    keeps answering OCSP on a new connection."""
    import random

    cert, ca, ca_der = one
    good = _post(request_der(cert, ca))
    rng = random.Random(20261123)
    samples = [b"GET /ocsp/ HTTP/1.1\r\n\r\n", b"POST /ocsp HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
               b"POST /ocsp HTTP/1.1\r\nContent-Type: application/ocsp-request\r\nContent-Length: 99999999\r\n\r\n",
               b"POST /ocsp HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
               b"GET /ocsp/%ZZ%00 HTTP/1.1\r\n\r\n", b"\r\n\r\n", b" / HTTP/1.1\r\n\r\n" * 3,
               b"GET /ocsp/" + b"A" * 20000 + b" HTTP/1.1\r\n\r\n"]
    for _ in range(60):
        mangled = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        samples.append(bytes(mangled[:rng.randint(1, len(mangled))]) + b"\r\n\r\n")
    for sample in samples:
        reader, writer = await wire()
        writer.write(sample)
        try:
            await asyncio.wait_for(reader.read(65536), 0.3)
        except (asyncio.TimeoutError, ConnectionError):
            pass  # waiting for more of a body, or reset: both are fine
        writer.close()
    reader, writer = await wire()
    writer.write(good)
    status, _headers, body = await _read(reader)
    assert status == 200 and check_response(body, ca_der).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert "fast path failed" not in caplog.text  # aiohttp logs the bad requests it was handed, as ever
