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
        database_url=pg.url,  # the service role; migrations run as the owner
        database_owner_url=pg.owner_url,
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
async def tls(rt):
    """The private listener's files (operations CA, server certificate), as `shomei serve` makes them."""
    from shomei.credentials import ensure_tls_files

    return await ensure_tls_files(rt)


@pytest_asyncio.fixture(scope="session")
async def terminal(rt, stack_dir, tls):
    """A terminal of Chiyoda-ku (131016) with its client certificate; its operator clerk-01 registered."""
    from tests.tls_clients import make_credential

    return await make_credential(rt, stack_dir / "clients", kind="terminal", name="test-terminal-131016",
                                 municipality_code="131016")


@pytest_asyncio.fixture(scope="session")
async def feed(rt, stack_dir, tls):
    """The resident-register feed's client certificate."""
    from tests.tls_clients import make_credential

    return await make_credential(rt, stack_dir / "clients", kind="feed", name="test-feed")


@pytest_asyncio.fixture(scope="session")
async def servers(rt, tls, terminal):
    """The whole application on both listeners of a real loopback server (free ports), as a worker of
    `shomei serve` runs it (tests.tls_clients.TestServers)."""
    from ocsp_responder.http import SERVICE
    from shomei.app import make_app
    from shomei.listeners import Listeners
    from tests.ocsp_helpers import use_responder
    from tests.tls_clients import TestServers

    listeners = Listeners()
    app = make_app(rt, listeners)
    use_responder(app[SERVICE])
    servers = await TestServers.start(rt, tls, default=terminal.ssl, app=app, listeners=listeners)
    yield servers
    await servers.close()


@pytest.fixture(scope="session")
def http(servers):
    """A client of the private listener (HTTPS); requests present the terminal's certificate unless
    they pass another credential's ``ssl`` (``**credential.auth()``)."""
    return servers.private


@pytest.fixture(scope="session")
def public(servers):
    """A client of the public listener (plain HTTP: CRLs, OCSP, CA certificates, the online window)."""
    return servers.public


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
        "DATABASE_OWNER_URL": cfg.database_owner_url,
        "SHOMEI_PKCS11_MODULE": cfg.hsm.module,
        "SHOMEI_PKCS11_TOKEN": cfg.hsm.token_label,
        "SHOMEI_PKCS11_PIN_FILE": cfg.hsm.pin_file,
        "SHOMEI_RESIDENT_KEY_FILE": cfg.security.resident_hash_key_file,
        "SOFTHSM2_CONF": token.conf,
        "SHOMEI_VAR_DIR": cfg.var_dir,
    })
    return env
