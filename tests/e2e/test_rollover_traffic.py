"""A CA rollover while issuance and OCSP traffic go on (`shomei serve --workers 2`, its own PostgreSQL):
no request fails, every acknowledged certificate is stored once, the workers move to the new
generation by themselves, and every OCSP answer is signed by the responder of the generation that
issued the certificate."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shomei.embedded import EmbeddedPostgres, free_port
from tests.e2e.test_faults import EXE, _listen, _start, _stop
from tests.helpers import KeyPool, issue_body
from tests.ocsp_helpers import check_response, get_path, request_der
from tests.tls_clients import var_credential


@pytest.mark.slow
async def test_rollover_under_traffic_loses_nothing(stack_env, tmp_path):
    pg = EmbeddedPostgres(tmp_path / "pg", free_port())
    url = await asyncio.to_thread(pg.ensure_started)
    config = tmp_path / "shomei.toml"
    config.write_text("[ocsp]\nreload_seconds = 1\n")  # workers pick up a new generation within a second
    env, port, private_port = _listen(stack_env, tmp_path)
    env.update({"DATABASE_URL": url, "DATABASE_OWNER_URL": pg.owner_url, "SHOMEI_VAR_DIR": str(tmp_path / "var"),
                "SHOMEI_DEMO_CLIENTS": "1", "SHOMEI_WORKERS": "2", "SHOMEI_CONFIG": str(config)})
    proc = await _start(env, port)
    keys = KeyPool()
    demo = var_credential(tmp_path / "var" / "tls", "demo-terminal", operator="demo-clerk")
    issued: list[tuple[float, x509.Certificate]] = []  # (acknowledged at, certificate)
    failures: list[str] = []
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession(f"https://127.0.0.1:{private_port}") as private, \
                aiohttp.ClientSession(f"http://127.0.0.1:{port}") as public:
            cas: dict[bytes, x509.Certificate] = {}

            async def ca_of(cert: x509.Certificate) -> x509.Certificate:
                kid = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
                if kid not in cas:
                    async with public.get(f"/ca/auth/{kid.hex()}.crt") as resp:
                        assert resp.status == 200
                        cas[kid] = x509.load_der_x509_certificate(await resp.read())
                return cas[kid]

            async def traffic():
                while not stop.is_set():
                    async with private.post("/v1/certificates", json=issue_body(keys, kinds=("auth",)),
                                            **demo.auth()) as resp:
                        if resp.status != 201:
                            failures.append(f"issuance {resp.status}: {await resp.text()}")
                            continue
                        body = await resp.json()
                    cert = x509.load_pem_x509_certificate(body["certificates"][0]["certificate"].encode())
                    issued.append((time.monotonic(), cert))
                    ca = await ca_of(cert)
                    async with public.get(get_path(request_der(cert, ca))) as resp:
                        der = await resp.read()
                    try:  # signed by a responder that the certificate's own generation certified
                        answer = check_response(der, ca.public_bytes(Encoding.DER))
                        assert answer.certificate_status.name == "GOOD"
                    except AssertionError as exc:
                        failures.append(f"OCSP for {cert.serial_number:x}: {exc!r}")

            tasks = [asyncio.create_task(traffic()) for _ in range(3)]
            await asyncio.sleep(3)
            rolled = await asyncio.create_subprocess_exec(EXE, "ca", "rollover", "--ca", "auth", env=env,
                                                          stdout=asyncio.subprocess.PIPE,
                                                          stderr=asyncio.subprocess.PIPE)
            out, err = await rolled.communicate()
            assert rolled.returncode == 0 and b"generation 2 is now current" in out, err
            rolled_at = time.monotonic()
            await asyncio.sleep(5)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        _stop(proc)
    try:
        assert not failures, failures[:5]
        generations = {c.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
                       for _t, c in issued}
        assert len(generations) == 2  # before and after the rollover
        print(f"\nrollover under traffic: {len(issued)} certificates issued and checked by OCSP, "
              f"{sum(1 for t, _c in issued if t <= rolled_at)} before the rollover, 0 failures")
        late = [c for t, c in issued if t > rolled_at + 2.5]  # the workers reload every second
        assert late and len({c.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
                             for c in late}) == 1
        conn = await asyncpg.connect(pg.owner_url)
        try:
            serials = [c.serial_number.to_bytes(16, "big") for _t, c in issued]
            stored = await conn.fetchval("SELECT count(*) FROM certificate WHERE serial = ANY($1::bytea[])", serials)
            assert stored == len(serials) == len(set(serials))
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(pg.stop)
