"""Faults an operator meets: a worker of `shomei serve --workers 2` killed (it is replaced, and the CRL
schedule goes on), and the database down for a while (503 with Retry-After and tryLater meanwhile,
never 500, and full service after it without restarting shomei).

Terminals and operations (/metrics, the detailed /healthz) are on the private listener (HTTPS, a client
certificate of the operations CA); OCSP and CA certificates on the public one."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from shomei.embedded import EmbeddedPostgres, free_port
from storage import crls
from tests.helpers import KeyPool, issue_body
from tests.ocsp_helpers import get_path, request_der, status_of
from tests.tls_clients import Credential, var_credential

EXE = str(Path(sys.executable).with_name("shomei"))


async def _start(env: dict, port: int, timeout: float = 90) -> subprocess.Popen:
    """`shomei serve`, ready: the public /healthz says ok and the private listener accepts connections."""
    proc = subprocess.Popen([EXE, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    private_host, private_port = env["SHOMEI_PRIVATE_LISTEN"].rsplit(":", 1)
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        _reader, writer = await asyncio.open_connection(private_host, int(private_port))
                        writer.close()
                        return proc
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.3)
    _stop(proc)
    raise AssertionError("serve did not become ready")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _children(pid: int) -> list[int]:
    """The worker processes of a `shomei serve` master (not multiprocessing's resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in cmdline:
                out.append(int(entry.name))
    return out


def _listen(env: dict, tmp_path: Path) -> tuple[dict, int, int]:
    """``env`` with both listeners on free ports of their own; (env, public port, private port)."""
    port, private_port = free_port(), free_port()
    return ({**env, "SHOMEI_LISTEN": f"127.0.0.1:{port}", "SHOMEI_PRIVATE_LISTEN": f"127.0.0.1:{private_port}"},
            port, private_port)


async def _health(private_port: int, credential: Credential) -> tuple[int, dict]:
    """The detailed health (checks, workers) of the private listener."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{private_port}/healthz", ssl=credential.ssl) as resp:
            return resp.status, await resp.json()


@pytest.mark.slow
async def test_a_killed_worker_is_replaced_and_the_schedule_goes_on(rt, stack_env, tmp_path, terminal):
    config = tmp_path / "shomei.toml"
    config.write_text("[crl]\ntick_seconds = 1\n")
    env, port, private_port = _listen(stack_env, tmp_path)
    env.update({"SHOMEI_CONFIG": str(config), "SHOMEI_VAR_DIR": str(tmp_path / "var"), "SHOMEI_WORKERS": "2"})
    proc = await _start(env, port)
    try:
        for _ in range(100):  # the first worker may answer before the second one is up
            _st, health = await _health(private_port, terminal)
            if health["checks"]["workers"]["live"] == 2:
                break
            await asyncio.sleep(0.1)
        assert health["checks"]["workers"]["live"] == health["checks"]["workers"]["expected"] == 2
        restarts = health["checks"]["workers"]["restarts"]  # 0, unless a worker failed to start under load
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        for _ in range(100):
            await asyncio.sleep(0.2)
            _st, health = await _health(private_port, terminal)
            if health["checks"]["workers"]["restarts"] == restarts + 1 and health["checks"]["workers"]["live"] == 2:
                break
        else:
            pytest.fail(f"the dead worker was not replaced: {health}")
        assert workers[0] not in _children(proc.pid) and len(_children(proc.pid)) == 2
        # The schedule lives in every worker: a new complete CRL makes the next tick publish its delta.
        issuer = rt.issuers.current("auth")
        res = await asyncio.create_subprocess_exec(EXE, "crl", "publish", "--ca", "auth", "--full", "--no-progress",
                                                   env=env, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE)
        _out, err = await res.communicate()
        assert res.returncode == 0, err
        async with rt.pool.acquire() as conn:
            base = await crls.latest(conn, issuer.db_id, "full", "base")
        for _ in range(100):
            async with rt.pool.acquire() as conn:
                delta = await crls.latest(conn, issuer.db_id, "full", "delta")
            if delta is not None and delta.number > base.number:
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("no worker published the due delta")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:  # not on the public listener
                assert resp.status == 404
            async with http.get(f"https://127.0.0.1:{private_port}/metrics", ssl=terminal.ssl) as resp:
                assert "shomei_worker_restarts_total 1.0" in await resp.text()
    finally:
        _stop(proc)


@pytest.mark.slow
async def test_database_outage_is_503_and_trylater_then_service_resumes(rt, stack_env, tmp_path, terminal):
    """The service's own PostgreSQL cluster (not the session's), stopped and started again under it."""
    pg = EmbeddedPostgres(tmp_path / "pg", free_port())
    url = await asyncio.to_thread(pg.ensure_started)
    env, port, private_port = _listen(stack_env, tmp_path)
    env.update({"DATABASE_URL": url, "DATABASE_OWNER_URL": pg.owner_url,  # migrations too, not the session's
                "SHOMEI_VAR_DIR": str(tmp_path / "var"), "SHOMEI_DEMO_CLIENTS": "1"})
    proc = await _start(env, port)
    keys = KeyPool()
    try:
        # the demo terminal of this service's own database (the session's terminal is not registered there)
        demo = var_credential(tmp_path / "var" / "tls", "demo-terminal", operator="demo-clerk")
        public = aiohttp.ClientSession(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession(f"https://127.0.0.1:{private_port}") as http, public:
            async with http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)),
                                 **demo.auth()) as resp:
                assert resp.status == 201, await resp.text()
                issued = await resp.json()
            from cryptography import x509
            cert = x509.load_pem_x509_certificate(issued["certificates"][0]["certificate"].encode())
            async with public.get("/ca/auth.crt") as resp:
                ca = x509.load_der_x509_certificate(await resp.read())
            await asyncio.to_thread(pg.stop)
            statuses = []
            for _ in range(5):
                async with http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)),
                                     **demo.auth()) as resp:
                    statuses.append(resp.status)
                    if resp.status == 503:
                        assert int(resp.headers["Retry-After"]) > 0
                async with http.post("/v1/revocations", json={"request_id": f"r-{time.time_ns()}",
                                                              "serial": format(cert.serial_number, "x"),
                                                              "reason": "holder_request"},
                                     **demo.auth()) as resp:
                    statuses.append(resp.status)
                async with public.get(get_path(request_der(cert, ca, nonce=os.urandom(16)))) as resp:
                    assert resp.status == 200 and status_of(await resp.read()) == "try_later"
            assert set(statuses) == {503}, statuses
            async with public.get("/healthz") as resp:
                assert resp.status == 503 and await resp.json() == {"status": "unavailable"}
            async with http.get("/healthz", ssl=demo.ssl) as resp:
                assert resp.status == 503 and (await resp.json())["checks"]["database"] != "ok"
            await asyncio.to_thread(pg.ensure_started)
            for _ in range(100):  # back within seconds, without restarting shomei
                async with http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)),
                                     **demo.auth()) as resp:
                    if resp.status == 201:
                        break
                    assert resp.status == 503, await resp.text()
                await asyncio.sleep(0.2)
            else:
                pytest.fail("service did not resume after the database came back")
            async with http.get("/healthz", ssl=demo.ssl) as resp:
                assert resp.status == 200, json.dumps(await resp.json())
            async with public.get("/healthz") as resp:
                assert resp.status == 200, json.dumps(await resp.json())
            async with http.get("/metrics", ssl=demo.ssl) as resp:  # the outage is counted
                assert 'shomei_unavailable_total{code="database_unavailable"}' in await resp.text()
    finally:
        _stop(proc)
        await asyncio.to_thread(pg.stop)


@pytest.mark.slow
async def test_sigterm_finishes_the_requests_in_flight(rt, stack_env, tmp_path, terminal):
    """Graceful stop: requests already received when SIGTERM arrives are answered (no reset, no 5xx)."""
    env, port, private_port = _listen(stack_env, tmp_path)
    env.update({"SHOMEI_VAR_DIR": str(tmp_path / "var"), "SHOMEI_WORKERS": "2"})
    proc = await _start(env, port)
    keys = KeyPool()
    bodies = [issue_body(keys) for _ in range(16)]
    sessions = [aiohttp.ClientSession(f"https://127.0.0.1:{private_port}") for _ in bodies]
    try:
        for s in sessions:  # one established keep-alive connection each (TLS handshake done; the requests
            # below present the same SSL context, so they reuse it rather than open another)
            async with s.get("/healthz", ssl=terminal.ssl) as resp:
                assert resp.status == 200

        async def one(session, body):
            async with session.post("/v1/certificates", json=body, **terminal.auth()) as resp:
                return resp.status

        inflight = [asyncio.create_task(one(s, b)) for s, b in zip(sessions, bodies)]
        await asyncio.sleep(0.005)
        os.killpg(proc.pid, signal.SIGTERM)
        statuses = await asyncio.gather(*inflight)
        assert statuses == [201] * len(bodies), statuses
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        for s in sessions:
            await s.close()
        _stop(proc)
