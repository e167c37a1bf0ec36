"""The OCSP caches and access policy: the shared PostgreSQL cache is never stale, the memory cache is not
used while the status listener is down, overload answers tryLater, verifiers are counted for billing."""
from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from ca_core.clock import JST, SystemClock
from storage import clients, ocsp as ocsp_store
from tests.helpers import certs_by_kind, issue, issue_body
from ocsp_responder.http import SERVICE
from tests.ocsp_helpers import check_response, delivered, get_path, request_der, responder, revoke, status_of

OCSP_HEADERS = {"Content-Type": "application/ocsp-request"}


@pytest.fixture
async def one(http, terminal, keys, rt):
    since = responder().cache.seq
    cert = certs_by_kind(await issue(http, terminal, issue_body(keys, kinds=("auth",))))["auth"]
    await delivered(rt, cert.serial_number, since)  # the new certificate's notification (it was "unknown")
    issuer = x509.load_der_x509_certificate(rt.issuers.current("auth").certificate_der)
    return cert, issuer, issuer.public_bytes(serialization.Encoding.DER)


def svc_of(rt):
    return responder()


async def cache_rows(rt, serial: int) -> list:
    async with rt.pool.acquire() as conn:
        return await conn.fetch("SELECT status_key FROM ocsp_response_cache WHERE serial = $1",
                                serial.to_bytes(16, "big"))


async def test_shared_cache_serves_other_processes_and_is_dropped_on_revocation(http, rt, one):
    cert, issuer, ca_der = one
    svc = svc_of(rt)
    der = request_der(cert, issuer)
    first = await svc.answer(der, b"k1" + der)
    assert first.source == "signed"
    await svc.flush()
    assert [r["status_key"] for r in await cache_rows(rt, cert.serial_number)] == ["good"]
    svc.cache.invalidate(cert.serial_number)  # as if this were another process: memory empty
    second = await svc.answer(der, b"k2" + der)
    assert second.source == "database" and second.body == first.body
    third = await svc.answer(der, b"k3" + der)
    assert third.source == "memory"

    await revoke(rt, cert.serial_number, 4)
    assert await cache_rows(rt, cert.serial_number) == []  # deleted by the trigger, in the same transaction
    fourth = await svc.answer(der, b"k4" + der)
    assert fourth.source == "signed"
    assert check_response(fourth.body, ca_der).certificate_status == ocsp.OCSPCertStatus.REVOKED


async def test_a_stale_shared_row_is_never_served(http, rt, one):
    """A signer that read `good` just before a revocation committed may write its row after the trigger
    ran: the row's status_key no longer matches, so it is ignored."""
    cert, issuer, ca_der = one
    svc = svc_of(rt)
    der = request_der(cert, issuer)
    good = await svc.answer(der, b"s1" + der)
    await revoke(rt, cert.serial_number, 1)
    cid = ocsp.load_der_ocsp_request(der)
    async with rt.pool.acquire() as conn:
        from asn1crypto import ocsp as aocsp
        cert_id = aocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]["req_cert"].dump()
        now = SystemClock().now()
        await ocsp_store.store_responses(conn, [(cert_id, rt.issuers.current("auth").db_id, cert.serial_number,
                                                 "good", good.body, now, now.replace(year=now.year + 1))])
    svc.cache.invalidate(cert.serial_number)
    answer = await svc.answer(der, b"s2" + der)
    assert answer.source == "signed"
    assert check_response(answer.body, ca_der).certificate_status == ocsp.OCSPCertStatus.REVOKED
    del cid


async def test_listener_loss_disables_memory_cache_until_reconnected(http, rt, one):
    cert, issuer, ca_der = one
    svc = svc_of(rt)
    der = request_der(cert, issuer)
    assert (await svc.answer(der, b"l1" + der)).source == "signed"
    assert (await svc.answer(der, b"l1" + der)).source == "memory"
    pid = svc.listener_pid
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    for _ in range(100):
        if not svc.cache.enabled:
            break
        await asyncio.sleep(0.01)
    assert not svc.cache.enabled and len(svc.cache) == 0
    await revoke(rt, cert.serial_number, 5)  # its notification is lost with the connection
    while_down = await svc.answer(der, b"l1" + der)
    assert while_down.source in ("signed", "database")
    assert check_response(while_down.body, ca_der).certificate_status == ocsp.OCSPCertStatus.REVOKED
    for _ in range(300):
        if svc.cache.enabled:
            break
        await asyncio.sleep(0.02)
    assert svc.cache.enabled and svc.listener_pid not in (None, pid)
    resp = await http.post("/ocsp", data=der, headers=OCSP_HEADERS)
    assert check_response(await resp.read(), ca_der).certificate_status == ocsp.OCSPCertStatus.REVOKED


async def test_overload_answers_try_later(http, rt, one):
    cert, issuer, _ca = one
    svc = svc_of(rt)
    cfg = svc.cfg
    svc.cfg = cfg.replace(max_pending_signatures=0)
    try:
        resp = await http.post("/ocsp", data=request_der(cert, issuer, nonce=secrets.token_bytes(16)),
                               headers=OCSP_HEADERS)
        assert resp.status == 200 and resp.headers["Retry-After"]
        assert status_of(await resp.read()) == "try_later"
    finally:
        svc.cfg = cfg


@pytest.fixture
async def verifier_http(rt):
    """The application in `verifier` access mode (same database and token)."""
    from shomei.app import make_app

    cfg = rt.cfg.replace(ocsp=rt.cfg.ocsp.replace(access="verifier", usage_flush_seconds=3600))
    rt2 = dataclasses.replace(rt, cfg=cfg)
    client = TestClient(TestServer(make_app(rt2)))
    await client.start_server()
    yield client, rt2
    await client.close()


async def test_verifier_mode(verifier_http, http, rt, one, terminal, stack_env):
    client, rt2 = verifier_http
    cert, issuer, ca_der = one
    der = request_der(cert, issuer)
    name = f"verifier-{secrets.token_hex(4)}"
    async with rt.pool.acquire() as conn:
        verifier, token = await clients.register_verifier(conn, name)
    # No credential, an unknown one, a terminal's: OCSP unauthorized (HTTP 200, RFC 6960 2.3).
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer shm_t_a-terminal-has-no-bearer-credential"}):
        resp = await client.post("/ocsp", data=der, headers={**OCSP_HEADERS, **headers})
        assert resp.status == 200 and status_of(await resp.read()) == "unauthorized"
        resp = await client.get(get_path(der), headers=headers)
        assert status_of(await resp.read()) == "unauthorized"
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        resp = await client.post("/ocsp", data=der, headers={**OCSP_HEADERS, **auth})
        assert check_response(await resp.read(), ca_der).certificate_status == ocsp.OCSPCertStatus.GOOD
    for _ in range(2):
        resp = await client.get(get_path(der), headers=auth)
        assert check_response(await resp.read(), ca_der).certificate_status == ocsp.OCSPCertStatus.GOOD
    metrics = await (await http.get("/metrics")).text()
    m = re.search(r'shomei_ocsp_verifier_answers_total\{verifier="%s"\} ([0-9.]+)' % name, metrics)
    assert m and float(m.group(1)) == 5
    await client.server.app[SERVICE].flush()
    today = SystemClock().now().astimezone(JST).date()
    async with rt.pool.acquire() as conn:
        assert await ocsp_store.usage(conn, verifier.id, today) == 5
    # the billing report an operator runs
    import subprocess
    import sys
    from pathlib import Path
    res = subprocess.run([str(Path(sys.executable).with_name("shomei")), "ocsp", "usage"], env=stack_env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{name}\t{today}\t5" in res.stdout.splitlines()


async def test_counts_are_flushed_on_clean_shutdown(rt, one):
    from shomei.app import make_app

    cert, issuer, _ca = one
    cfg = rt.cfg.replace(ocsp=rt.cfg.ocsp.replace(access="verifier", usage_flush_seconds=3600))
    rt2 = dataclasses.replace(rt, cfg=cfg)
    async with rt.pool.acquire() as conn:
        verifier, token = await clients.register_verifier(conn, f"verifier-{secrets.token_hex(4)}")
    client = TestClient(TestServer(make_app(rt2)))
    await client.start_server()
    for _ in range(4):
        resp = await client.post("/ocsp", data=request_der(cert, issuer),
                                 headers={**OCSP_HEADERS, "Authorization": f"Bearer {token}"})
        assert resp.status == 200
    await client.close()  # runs the cleanup context: final flush
    async with rt.pool.acquire() as conn:
        assert await ocsp_store.usage(conn, verifier.id) == 4


async def test_answers_and_misses_per_minute(rt, one):
    """Each process counts its answers per minute (all, misses, errors) and adds them to ocsp_minute at
    its flush, where the operators' status page reads them."""
    import datetime as dt
    import time

    from shomei.app import make_app

    cert, issuer, ca_der = one
    der = request_der(cert, issuer)
    cfg = rt.cfg.replace(ocsp=rt.cfg.ocsp.replace(usage_flush_seconds=3600))
    client = TestClient(TestServer(make_app(dataclasses.replace(rt, cfg=cfg))))
    await client.start_server()
    try:
        svc = client.server.app[SERVICE]
        minute = int(time.time()) // 60
        for _ in range(3):  # a miss (read or signed), then memory
            resp = await client.get(get_path(der))
            assert check_response(await resp.read(), ca_der).certificate_status == ocsp.OCSPCertStatus.GOOD
        resp = await client.post("/ocsp", data=b"\x30\x03\x02\x01", headers={"Content-Type": "application/ocsp-request"})
        assert status_of(await resp.read()) == "malformed_request"
        if int(time.time()) // 60 == minute:  # the four answers fell in one minute (else skip the exact check)
            assert svc.minutes == {minute: [4, 1, 1]}
        assert [sum(v[i] for v in svc.minutes.values()) for i in range(3)] == [4, 1, 1]
    finally:
        await client.close()  # a clean shutdown flushes
    assert svc.minutes == {}
    # The table adds what every process brings (a minute long past, ours alone).
    past = int(dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc).timestamp()) // 60
    async with rt.pool.acquire() as conn:
        await ocsp_store.purge_minutes(conn, before=dt.datetime(2001, 1, 2, tzinfo=dt.timezone.utc))
        await ocsp_store.add_minutes(conn, {past: [7, 2, 1]})
        await ocsp_store.add_minutes(conn, {past: [3, 1, 0], past + 1: [1, 0, 0]})
        got = await ocsp_store.minutes(conn, dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc))
        assert {k: v for k, v in got.items() if k.year == 2001} == {
            dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc): (10, 3, 1),
            dt.datetime(2001, 1, 1, 0, 1, tzinfo=dt.timezone.utc): (1, 0, 0)}
        await ocsp_store.purge_minutes(conn, before=dt.datetime(2001, 1, 2, tzinfo=dt.timezone.utc))
        assert not [k for k in await ocsp_store.minutes(conn, dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc))
                    if k.year == 2001]
