"""Shared fixtures. Integration and end-to-end tests run on a real PostgreSQL cluster and a real SoftHSM
token, both created in a temporary folder for the test session and stopped afterwards."""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_asyncio

from tests.helpers import KeyPool


@pytest.fixture(scope="session")
def stack_dir():
    path = Path(tempfile.mkdtemp(prefix="shomei-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(stack_dir):
    """A PostgreSQL cluster of our own on a free port; DATABASE_URL of a fresh database."""
    from shomei.embedded import EmbeddedPostgres, free_port

    server = EmbeddedPostgres(stack_dir / "pg", free_port())
    server.ensure_started()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token(stack_dir):
    from shomei.embedded import EmbeddedToken

    return EmbeddedToken(stack_dir / "softhsm").ensure()


@pytest.fixture(scope="session")
def cfg(pg, token, stack_dir):
    """Configuration of the test stack (real PostgreSQL, real SoftHSM token)."""
    from ca_core import config

    key_file = stack_dir / "resident-hash.key"
    key_file.write_bytes(secrets.token_bytes(32))
    base = config.load(env={})
    return base.replace(
        database_url=pg.url,
        var_dir=str(stack_dir / "var"),
        hsm=base.hsm.replace(module=token.module, token_label=token.label, pin_file=token.pin_file),
        security=base.security.replace(resident_hash_key_file=str(key_file)),
        server=base.server.replace(public_base_url="http://127.0.0.1:8080"),
    )


@pytest_asyncio.fixture(scope="session")
async def rt(cfg):
    """An open Runtime after migrations and the key ceremony."""
    from plumbing.runtime import open_runtime
    from shomei.operations import run_ceremony

    runtime = await open_runtime(cfg)
    await run_ceremony(runtime)
    yield runtime
    await runtime.close()


@pytest_asyncio.fixture(scope="session")
async def http(rt):
    """An aiohttp test client on a real loopback server running the whole application."""
    from aiohttp.test_utils import TestClient, TestServer

    from ocsp_responder.http import SERVICE
    from shomei.app import make_app
    from tests.ocsp_helpers import use_responder

    app = make_app(rt)
    use_responder(app[SERVICE])
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="session")
async def terminal(rt):
    """Bearer credential of a terminal of Chiyoda-ku (131016)."""
    from storage import clients

    async with rt.pool.acquire() as conn:
        _c, tok = await clients.register(conn, kind="terminal", name="test-terminal-131016",
                                         municipality_code="131016")
    return tok


@pytest_asyncio.fixture(scope="session")
async def feed_token(rt):
    from storage import clients

    async with rt.pool.acquire() as conn:
        _c, tok = await clients.register(conn, kind="feed", name="test-feed")
    return tok


@pytest.fixture(scope="session")
def keys():
    """RSA-2048 key pairs generated once per session, handed out one per certificate."""
    return KeyPool()


@pytest.fixture(scope="session")
def ca_pem(rt, stack_dir):
    """Paths of the current CA certificates as PEM files (for openssl)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    out = {}
    for ca in ("signing", "auth"):
        path = stack_dir / f"{ca}-ca.pem"
        der = rt.issuers.current(ca).certificate_der
        path.write_bytes(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM))
        out[ca] = str(path)
    return out


@pytest.fixture(scope="session")
def stack_env(cfg, token):
    """Environment for running `shomei` subprocesses against the test stack."""
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": cfg.database_url,
        "SHOMEI_PKCS11_MODULE": cfg.hsm.module,
        "SHOMEI_PKCS11_TOKEN": cfg.hsm.token_label,
        "SHOMEI_PKCS11_PIN_FILE": cfg.hsm.pin_file,
        "SHOMEI_RESIDENT_KEY_FILE": cfg.security.resident_hash_key_file,
        "SOFTHSM2_CONF": token.conf,
        "SHOMEI_VAR_DIR": cfg.var_dir,
    })
    return env
