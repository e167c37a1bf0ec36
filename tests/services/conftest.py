"""Fixtures of the service-level tests: every use-case service built directly from its typed parts.

The parts are real except the token: a PostgreSQL database of our own (created in the session's
cluster, migrated, dropped at the end, so nothing leaks into the database of the other tests), a
SoftwareSigner holding the CA and responder keys made by the real ceremony code, a FixedClock, and the
CA generations loaded from the database. Keys are generated once per session.
"""
from __future__ import annotations

import asyncio
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from ca_core.ca import FixedIssuers, IssuerSet
from ca_core.clock import FixedClock
from ca_core.kinds import KINDS
from ca_core.profiles import CertificateProfile
from tests.services.support import T0, CardKeys, Parts


def _database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest_asyncio.fixture(scope="session")
async def services_db(pg):
    """URL of a fresh, migrated database in the session's cluster, dropped after the session."""
    from storage import db

    name = f"shomei_services_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _database_url(pg.url, name)
    await asyncio.to_thread(db.migrate, url)
    yield url
    admin = await asyncpg.connect(pg.url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="session")
async def parts(services_db, keys):
    """The shared parts: pool, software token with both CAs and their OCSP responders, clients."""
    import hashlib

    from asn1crypto import x509 as ax509

    from ca_core import config
    from ca_core.ca import key_identifier
    from hsm import ceremony
    from hsm.software_signer import SoftwareSigner
    from ocsp_responder import responders
    from storage import cas, clients, db

    cfg = config.load(env={})
    cfg = cfg.replace(database_url=services_db)
    pool = await db.create_pool(services_db, min_size=1, max_size=8)
    signer = SoftwareSigner()
    async with pool.acquire() as conn:
        async with conn.transaction():
            await cas.lock_ceremony(conn)
            for ca_id in KINDS:
                ca_cfg = cfg.ca.get(ca_id)
                made = await ceremony.create_root(signer, ca_id, 1, ca_cfg, T0)
                spki = ax509.Certificate.load(made.certificate_der)["tbs_certificate"]["subject_public_key_info"]
                await cas.insert_generation(
                    conn, ca_id=ca_id, generation=1, key_label=made.key_label, key_type=ca_cfg.key_type,
                    key_id=key_identifier(spki), certificate=made.certificate_der,
                    fingerprint=hashlib.sha256(made.certificate_der).hexdigest(), not_before=made.not_before,
                    not_after=made.not_after, make_current=True)
            issuers = IssuerSet(await cas.list_generations(conn))
            made_responders = await responders.renew_due(conn, signer, issuers, cfg.ca, T0)
        terminal = await clients.register(conn, kind="terminal", name=f"svc-terminal-{secrets.token_hex(4)}",
                                             municipality_code="131016")
        feed = await clients.register(conn, kind="feed", name=f"svc-feed-{secrets.token_hex(4)}")
    assert len(issuers) == 2 and len(made_responders) == 2
    yield Parts(cfg=cfg, url=services_db, pool=pool, signer=signer, issuers=issuers,
                resident_key=secrets.token_bytes(32), terminal=terminal, feed=feed, card_keys=CardKeys(keys))
    await pool.close()


@pytest.fixture
def clock():
    """A fresh FixedClock at T0 for every test (tests may move it freely)."""
    return FixedClock(T0)


@pytest.fixture
def profiles(parts):
    return {kind: CertificateProfile.from_config(parts.cfg, kind) for kind in KINDS}


@pytest.fixture
def issuance(parts, clock, profiles):
    from issuance.service import IssuanceService

    return IssuanceService(pool=parts.pool, signer=parts.signer, clock=clock, issuers=FixedIssuers(parts.issuers),
                           profiles=profiles, settings=parts.cfg.issuance, resident_key=parts.resident_key)


@pytest.fixture
def window(parts, clock):
    from revocation.service import WindowService

    return WindowService(pool=parts.pool, clock=clock, resident_key=parts.resident_key)


@pytest.fixture
def feed(parts, clock):
    from revocation.feed import FeedService

    return FeedService(pool=parts.pool, clock=clock, resident_key=parts.resident_key,
                       settings=parts.cfg.revocation)


@pytest.fixture
def online(parts, clock):
    from revocation.online_window import OnlineWindow

    return OnlineWindow(pool=parts.pool, clock=clock, issuers=FixedIssuers(parts.issuers),
                        settings=parts.cfg.revocation)


@pytest.fixture
def publisher(parts, clock, profiles, tmp_path):
    from crl_publisher.publisher import Publisher

    return Publisher(pool=parts.pool, signer=parts.signer, clock=clock, issuers=FixedIssuers(parts.issuers),
                     profiles=profiles, settings=parts.cfg.crl, partition_size=parts.cfg.issuance.partition_size,
                     out=tmp_path / "crl")


@pytest_asyncio.fixture
async def responder(parts, clock):
    from ocsp_responder.service import Responder
    from plumbing.runtime import IssuerDirectory

    directory = IssuerDirectory(parts.pool)
    await directory.reload()
    svc = Responder(pool=parts.pool, signer=parts.signer, clock=clock, directory=directory,
                    settings=parts.cfg.ocsp, channel=None, cas_cfg=parts.cfg.ca)
    await svc.load_responders()
    return svc
