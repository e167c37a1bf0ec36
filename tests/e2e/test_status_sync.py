"""No stale OCSP answer after an acknowledged revocation, across the worker processes of a real
`shomei serve --workers 2` (docs/architecture.md: once the HTTP answer of a revocation leaves, no process
serves an answer from before it).

Connection A is kept on worker 0 and B on worker 1, both on the private listener (HTTPS, the terminal's
client certificate; its detailed GET /healthz names the worker of a connection, and it serves OCSP too).
Every certificate's "good" answer is first put into worker 1's memory cache; then each round revokes one
certificate on A and, the moment the 201 is read, asks its OCSP answer on B: it must already say revoked.
With `[server] status_sync_ms = 0` (no wait for the other processes' status listeners) this test fails:
worker 1 then answers "good" from memory in one to a few rounds in a hundred.

Everything runs on the test's event loop (aiohttp, asyncio subprocess): the session's own status listener,
if another test started one, must keep answering sync notices meanwhile.
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from shomei.embedded import free_port
from tests.helpers import csr_pem, issue_body
from tests.ocsp_helpers import get_path, request_der
from tests.tls_clients import Credential

EXE = str(Path(sys.executable).with_name("shomei"))
ROUNDS = 300
STATUS_SYNC_MS: int | None = None  # None: the default (2000); 0 turns the wait off, and the test fails
ROUND_LIMIT = 10.0  # seconds of "good" after an acknowledgement before a round is given up


async def _start(env: dict, port: int, log_path: Path) -> asyncio.subprocess.Process:
    """`shomei serve --workers 2`, ready: the public /healthz says ok, the private listener accepts."""
    with open(log_path, "wb") as log:
        # A session of its own: if the master had to be killed, its workers go with the group.
        proc = await asyncio.create_subprocess_exec(EXE, "serve", "--workers", "2", env=env,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=log,
                                                    start_new_session=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz",
                                       timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200 and (await r.json())["status"] == "ok":
                        host, private_port = env["SHOMEI_PRIVATE_LISTEN"].rsplit(":", 1)
                        _reader, writer = await asyncio.open_connection(host, int(private_port))
                        writer.close()
                        return proc
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            await asyncio.sleep(0.3)
    await _stop(proc)
    raise AssertionError(f"serve did not become ready: {log_path.read_text()[-3000:]}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the master stops its workers), then SIGKILL to the whole process group."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 60)
    except asyncio.TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


class Pinned:
    """One keep-alive connection (a session limited to one) to the private listener, as ``credential``;
    counts the connections it ever opened, so that a silent reconnection, which could land on the other
    worker, shows. Every request presents the same SSL context (another one would be another connection)."""

    def __init__(self, base: str, credential: Credential):
        self.credential = credential
        self.opened = 0
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._opened)
        self.session = aiohttp.ClientSession(
            base, connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=300), trace_configs=[trace],
            timeout=aiohttp.ClientTimeout(total=30))

    async def _opened(self, *_args) -> None:
        self.opened += 1

    def get(self, path: str):
        return self.session.get(path, ssl=self.credential.ssl)

    def post(self, path: str, **kw):
        return self.session.post(path, **self.credential.auth(), **kw)

    async def worker(self) -> int:
        async with self.get("/healthz") as r:
            body = await r.json()
        assert r.status == 200 and body["checks"]["status_listener"] == "ok", body
        return body["worker"]

    async def ocsp_status(self, path: str):
        async with self.get(path) as r:
            der = await r.read()
        assert r.status == 200, r.status
        resp = ocsp.load_der_ocsp_response(der)
        assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, resp.response_status
        return resp.certificate_status


async def _pinned_pair(base: str, credential: Credential) -> tuple[Pinned, Pinned]:
    """A on worker 0, B on worker 1: open connections until both are found."""
    found: dict[int, Pinned] = {}
    for _ in range(100):
        conn = Pinned(base, credential)
        worker = await conn.worker()
        if worker in (0, 1) and worker not in found:
            found[worker] = conn
            if len(found) == 2:
                return found[0], found[1]
        else:
            await conn.session.close()
            await asyncio.sleep(0.01)
    for conn in found.values():
        await conn.session.close()
    raise AssertionError(f"100 connections reached only worker(s) {sorted(found)}")


async def _issue(base: str, terminal: Credential, keys, n: int) -> list[tuple[str, str]]:
    """``n`` auth certificates over HTTPS (the private listener at ``base``); (hex serial, OCSP GET path)
    of each."""
    csrs = [csr_pem(keys.new()) for _ in range(4)]
    out: list[tuple[str, str]] = []
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=8)) as session:
        async with session.get("/ca/auth.crt", ssl=terminal.ssl) as r:
            issuer = x509.load_der_x509_certificate(await r.read())

        async def one(i: int) -> tuple[str, str]:
            body = issue_body(keys, kinds=(), auth_csr=csrs[i % len(csrs)])
            async with session.post("/v1/certificates", json=body, **terminal.auth()) as r:
                data = await r.json()
            assert r.status == 201, data
            c = data["certificates"][0]
            return c["serial"], get_path(request_der(x509.load_pem_x509_certificate(c["certificate"].encode()),
                                                     issuer))
        for start in range(0, n, 32):
            out += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 32))))
    return out


@pytest.mark.slow
async def test_no_stale_good_answer_on_another_worker_after_acknowledged_revocation(rt, stack_env, terminal, keys,
                                                                                   tmp_path):
    config = tmp_path / "shomei.toml"
    config.write_text("[server]\n" + (f"status_sync_ms = {STATUS_SYNC_MS}\n" if STATUS_SYNC_MS is not None else ""))
    port, private_port = free_port(), free_port()
    base = f"https://127.0.0.1:{private_port}"
    env = {**stack_env, "SHOMEI_LISTEN": f"127.0.0.1:{port}", "SHOMEI_PRIVATE_LISTEN": f"127.0.0.1:{private_port}",
           "SHOMEI_CONFIG": str(config), "SHOMEI_VAR_DIR": str(tmp_path / "var")}
    for var in ("SHOMEI_DEMO_CLIENTS", "SHOMEI_WORKERS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(var, None)
    proc = await _start(env, port, tmp_path / "serve.log")
    a = b = None
    try:
        certs = await _issue(base, terminal, keys, ROUNDS)
        a, b = await _pinned_pair(base, terminal)
        for _serial, path in certs:  # each "good" answer signed, then served from worker 1's memory
            for _ in range(2):
                assert await b.ocsp_status(path) == ocsp.OCSPCertStatus.GOOD

        tag = secrets.token_hex(4)
        stale, goods, windows = 0, 0, []
        for i, (serial, path) in enumerate(certs):
            async with a.post("/v1/revocations", json={"request_id": f"sync-{tag}-{i}", "serial": serial,
                                                       "reason": "holder_request"}) as r:
                answer = await r.read()
            acked = time.perf_counter()
            assert r.status == 201, answer
            round_goods = 0
            while (status := await b.ocsp_status(path)) == ocsp.OCSPCertStatus.GOOD:
                round_goods += 1
                assert time.perf_counter() - acked < ROUND_LIMIT, f"{serial} still good {ROUND_LIMIT} s after"
            assert status == ocsp.OCSPCertStatus.REVOKED, status
            if round_goods:
                stale += 1
                goods += round_goods
                windows.append(1000 * (time.perf_counter() - acked))

        # every request of A and B went over the connection whose worker was checked
        assert (a.opened, b.opened) == (1, 1), (a.opened, b.opened)
        assert (await a.worker(), await b.worker()) == (0, 1)
        assert stale == 0, (f"{stale} of {ROUNDS} rounds answered 'good' on worker 1 after the revocation was "
                            f"acknowledged ({goods} such answers; windows up to {max(windows):.2f} ms)")

        async with a.get("/metrics") as r:  # merged over the workers (PROMETHEUS_MULTIPROC_DIR)
            metrics = await r.text()
        ok = re.search(r'^shomei_status_sync_total\{result="ok"\} (\S+)$', metrics, re.M)
        assert ok is not None, "no shomei_status_sync_total{result=\"ok\"} in /metrics"
        assert float(ok.group(1)) >= ROUNDS, ok.group(0)
        assert not re.search(r'^shomei_status_sync_total\{result="(timeout|no_listener|error)"\} [1-9]', metrics,
                             re.M)
    finally:
        for conn in (a, b):
            if conn is not None:
                await conn.session.close()
        await _stop(proc)
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
