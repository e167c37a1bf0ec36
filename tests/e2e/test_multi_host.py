"""Two hosts that share nothing but PostgreSQL and the token: two `shomei serve` with folders and listeners
of their own. What one publishes the other serves, byte for byte; what one revokes the other's OCSP
answers at once; and a host killed (SIGKILL, the whole process group) while it publishes costs nothing:
the other takes the lease and publishes, the killed host's CRL number is never used, no half-written CRL
is served anywhere, and the killed host, started again, serves the other's CRL."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from crl_publisher.files import number_of
from crl_publisher.publisher import Target
from storage import crls
from tests.e2e.test_faults import EXE, _listen, _start, _stop
from tests.helpers import certs_by_kind, issue, issue_body
from tests.ocsp_helpers import check_response, get_path, request_der
from tests.integration.revocation_support import rid

pytestmark = pytest.mark.slow


def _host(stack_env, tmp_path, name: str) -> tuple[dict, int, int]:
    config = tmp_path / "shomei.toml"
    # Every certificate a partition of its own, so that each issuance makes a CRL due at once on every
    # host; the scheduler looks every second.
    config.write_text("[crl]\ntick_seconds = 1\n\n[issuance]\npartition_size = 1\n")
    env, port, private_port = _listen(stack_env, tmp_path)
    env.update({"SHOMEI_CONFIG": str(config), "SHOMEI_VAR_DIR": str(tmp_path / name), "SHOMEI_WORKERS": "1"})
    return env, port, private_port


async def _until(check, seconds: float = 60, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


async def test_two_hosts_share_nothing_but_the_database_and_the_token(rt, stack_env, tmp_path, terminal, keys):
    a_env, a_port, a_private = _host(stack_env, tmp_path, "host-a")
    b_env, b_port, b_private = _host(stack_env, tmp_path, "host-b")
    a = await _start(a_env, a_port)
    b = None
    blocker = await __import__("asyncpg").connect(rt.cfg.database_owner_url)
    try:
        async with aiohttp.ClientSession() as http:
            # 1. Host A is killed while it publishes. New CRL content waits behind a table lock, so A's
            # publication of the new partition stops half-way: lease taken, number allocated, part of the
            # entries written to its folder and into an uncommitted transaction.
            tr = blocker.transaction()
            await tr.start()
            await blocker.execute("LOCK TABLE crl_content IN SHARE MODE")
            data = await issue(aiohttp_base(http, a_private), terminal, issue_body(keys, kinds=("auth",)))
            cert = certs_by_kind(data)["auth"]
            issuer = rt.issuers.current("auth")
            async with rt.pool.acquire() as conn:
                cert_id = await conn.fetchval("SELECT id FROM certificate WHERE serial = $1",
                                              cert.serial_number.to_bytes(16, "big"))
            scope = crls.partition_scope(cert_id)
            path = f"auth/g{issuer.generation}-p{cert_id}.crl"

            async def publishing():
                """(generation id, scope, number) of the publication host A is stuck in: its upload
                waits for the lock, its scheduler holds the scope's lease, its number is allocated."""
                async with rt.pool.acquire() as conn:
                    waiting = await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO crl_content%'"
                        " AND wait_event_type = 'Lock'")
                    lease = await conn.fetchrow(
                        "SELECT classid::bigint - $1 AS gen, objid::bigint AS part FROM pg_locks"
                        " WHERE locktype = 'advisory' AND objsubid = 2 AND granted"
                        " AND classid::bigint BETWEEN $1 AND $1 + 100000", crls._LEASE_CLASS)
                    if not waiting or lease is None:
                        return None
                    stuck = crls.FULL if lease["part"] == 0xFFFFFFFF else crls.partition_scope(lease["part"])
                    number = await conn.fetchval("SELECT last_number FROM crl_number WHERE ca_generation_id = $1"
                                                 " AND scope = $2", lease["gen"], stuck)
                return (lease["gen"], stuck, int(number)) if number is not None else None

            gen_id, stuck, killed_number = await _until(publishing, what="host A publishing")
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
            b = await _start(b_env, b_port)
            await tr.rollback()  # the lock goes; host B's scheduler takes the leases

            async def published(generation_id, scope, kind=None):
                async with rt.pool.acquire() as conn:
                    return await crls.latest(conn, generation_id, scope, kind)

            async def taken_over():
                last = await published(gen_id, stuck)
                return last if last is not None and last.number > killed_number else None

            await _until(taken_over, what="host B publishing the scope host A was publishing")
            async with rt.pool.acquire() as conn:
                numbers = [int(r["crl_number"]) for r in await conn.fetch(
                    "SELECT crl_number FROM crl WHERE ca_generation_id = $1 AND scope = $2", gen_id, stuck)]
            assert killed_number not in numbers  # A's number is never used: numbers never repeat or go back
            for kind in ("base", "delta"):  # nothing half-written was installed on A
                f = tmp_path / "host-a" / "crl" / Target(rt.issuers.by_id(gen_id), stuck, kind).path
                if f.exists():
                    assert number_of(f) != killed_number
                    x509.load_der_x509_crl(f.read_bytes())
            done = await _until(lambda: published(issuer.db_id, scope, "base"), what="the new partition's CRL")

            # 2. Host A again, on its own folder: it serves B's CRL, byte for byte.
            a = await _start(a_env, a_port)
            from_b = await _get(http, b_port, f"/crl/{path}")
            from_a = await _get(http, a_port, f"/crl/{path}")
            crl = x509.load_der_x509_crl(from_a)
            assert crl.is_signature_valid(x509.load_der_x509_certificate(issuer.certificate_der).public_key())
            assert from_a == from_b and crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number \
                == done.number
            assert (tmp_path / "host-a" / "crl" / path).read_bytes() == from_a

            # 3. Revoked through A, revoked at once in B's OCSP.
            ca = x509.load_der_x509_certificate(issuer.certificate_der)
            der = request_der(cert, ca)
            answer = check_response(await _get(http, b_port, get_path(der)), ca.public_bytes(Encoding.DER))
            assert answer.certificate_status.name == "GOOD"
            async with http.post(f"https://127.0.0.1:{a_private}/v1/revocations",
                                 json={"request_id": rid(), "serial": format(cert.serial_number, "x"),
                                       "reason": "holder_request"}, **terminal.auth()) as resp:
                assert resp.status == 201, await resp.text()
            answer = check_response(await _get(http, b_port, get_path(der)), ca.public_bytes(Encoding.DER))
            assert answer.certificate_status.name == "REVOKED"

            # 4. Published on B (a full CRL by B's command line), read from A.
            res = await asyncio.create_subprocess_exec(EXE, "crl", "publish", "--ca", "auth", "--full",
                                                       "--no-progress", env=b_env, stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.PIPE)
            _out, err = await res.communicate()
            assert res.returncode == 0, err
            mine = (tmp_path / "host-b" / "crl" / "auth" / f"g{issuer.generation}" / "full.crl").read_bytes()

            async def same():
                return await _get(http, a_port, "/crl/auth/full.crl") == mine
            await _until(same, seconds=10, what="host A serving B's full CRL")
            assert cert.serial_number in {e.serial_number for e in x509.load_der_x509_crl(mine)}
    finally:
        await blocker.close()
        _stop(a)
        if b is not None:
            _stop(b)


def aiohttp_base(http, private_port: int):
    """``http`` posting to the private listener of a host (issue() posts to a relative path)."""
    class _Base:
        def post(self, path, **kw):
            return http.post(f"https://127.0.0.1:{private_port}{path}", **kw)
    return _Base()


async def _get(http, port: int, path: str) -> bytes:
    async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
        assert resp.status == 200, (path, resp.status, await resp.text())
        return await resp.read()
