"""Key rollover that relying parties survive: the new generation comes with the two link certificates
of RFC 4210 4.4, and OpenSSL, trusting only one root, validates certificates of the other generation
through them (and not without them)."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import subprocess

import asyncpg
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca_core import config
from ca_core.ca import IssuerSet
from ca_core.names import build_name
from ca_core.profiles import assemble_certificate, tls_tbs
from ca_core.serials import new_serial
from hsm.software_signer import SoftwareSigner
from issuance import ca_keys
from storage import cas, db
from tests.services.conftest import _database_url
from tests.services.support import T0


@contextlib.asynccontextmanager
async def own_database(pg):
    """A migrated database of its own in the session's cluster (a rollover changes what is current: the
    other tests' database is left alone); dropped afterwards. Yields its URL."""
    name = f"shomei_rollover_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = _database_url(pg.url, name)
    await asyncio.to_thread(db.migrate, url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(pg.url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest_asyncio.fixture
async def rolled(pg):
    """A database of its own with the signing CA's generation 1, then a rollover to generation 2."""
    async with own_database(pg) as url:
        async for value in _rolled(url):
            yield value


async def _rolled(url):
    pool = await db.create_pool(url, min_size=1, max_size=2)
    signer = SoftwareSigner()
    cfg = config.load(env={})
    async with pool.acquire() as conn, conn.transaction():
        await ca_keys.ensure_generations(conn, signer, cfg.ca, T0)
        assert await ca_keys.new_generation(conn, signer, cfg.ca, "signing", T0 + dt.timedelta(days=400)) == 2
        issuers = IssuerSet(await cas.list_generations(conn))
        links = await cas.list_links(conn)
    yield signer, issuers, links, url
    await pool.close()


async def _end_entity(signer, issuer, at: dt.datetime) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    tbs = tls_tbs(issuer, subject=build_name([("CN", f"ee of g{issuer.generation}")]), spki_der=spki,
                  serial=new_serial(), not_before=at, not_after=at + dt.timedelta(days=30), server=False).dump()
    der = assemble_certificate(tbs, issuer.algorithm, await signer.sign(issuer.key_label, issuer.algorithm, tbs))
    return x509.load_der_x509_certificate(der)


def _openssl_verify(tmp_path, trusted: x509.Certificate, untrusted: x509.Certificate | None,
                    leaf: x509.Certificate, at: dt.datetime) -> subprocess.CompletedProcess:
    paths = {}
    for name, cert in (("trusted", trusted), ("untrusted", untrusted), ("leaf", leaf)):
        if cert is not None:
            paths[name] = tmp_path / f"{name}-{secrets.token_hex(3)}.pem"
            paths[name].write_bytes(cert.public_bytes(Encoding.PEM))
    args = ["openssl", "verify", "-attime", str(int(at.timestamp())), "-CAfile", str(paths["trusted"])]
    if "untrusted" in paths:
        args += ["-untrusted", str(paths["untrusted"])]
    return subprocess.run(args + [str(paths["leaf"])], capture_output=True, text=True)


async def test_link_certificates_let_either_root_validate_the_other(rolled, tmp_path):
    signer, issuers, links, _url = rolled
    g1 = next(i for i in issuers if (i.ca_id, i.generation) == ("signing", 1))
    g2 = issuers.current("signing")
    assert g2.generation == 2 and g1.name_der == g2.name_der and g1.key_id != g2.key_id
    by_direction = {link.direction: x509.load_der_x509_certificate(link.certificate) for link in links}
    assert sorted(by_direction) == ["new_with_old", "old_with_new"]
    assert all((link.ca_id, link.new_generation, link.old_generation) == ("signing", 2, 1) for link in links)
    roots = {1: x509.load_der_x509_certificate(g1.certificate_der), 2: x509.load_der_x509_certificate(g2.certificate_der)}
    for direction, (subject_g, signer_g) in {"new_with_old": (2, 1), "old_with_new": (1, 2)}.items():
        link = by_direction[direction]
        link.verify_directly_issued_by(roots[signer_g])  # signed by the other generation's key
        assert link.public_key().public_numbers() == roots[subject_g].public_key().public_numbers()
        ski = link.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        aki = link.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        assert (ski, aki) == ({1: g1, 2: g2}[subject_g].key_id, {1: g1, 2: g2}[signer_g].key_id)
        bc = link.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == 0
        assert link.subject == link.issuer == roots[1].subject
        assert link.not_valid_before_utc >= max(r.not_valid_before_utc for r in roots.values())
        assert link.not_valid_after_utc <= min(r.not_valid_after_utc for r in roots.values())
    at = T0 + dt.timedelta(days=401)
    ee_new, ee_old = await _end_entity(signer, g2, at), await _end_entity(signer, g1, at)
    later = at + dt.timedelta(days=1)
    # only the old root trusted: a new-generation certificate validates through new-with-old
    res = _openssl_verify(tmp_path, roots[1], by_direction["new_with_old"], ee_new, later)
    assert res.returncode == 0 and ": OK" in res.stdout, res.stdout + res.stderr
    assert _openssl_verify(tmp_path, roots[1], None, ee_new, later).returncode != 0
    # only the new root trusted: an old-generation certificate validates through old-with-new
    res = _openssl_verify(tmp_path, roots[2], by_direction["old_with_new"], ee_old, later)
    assert res.returncode == 0 and ": OK" in res.stdout, res.stdout + res.stderr
    assert _openssl_verify(tmp_path, roots[2], None, ee_old, later).returncode != 0
    # and the wrong link does not help
    assert _openssl_verify(tmp_path, roots[1], by_direction["old_with_new"], ee_new, later).returncode != 0


async def test_link_certificates_are_published(rolled, pg):
    """GET /ca lists them; /ca/signing/g2/new-with-old.crt|.pem and old-with-new serve them."""
    from aiohttp.test_utils import TestClient, TestServer

    from ca_core.clock import FixedClock
    from plumbing.auth import ClientCache
    from plumbing.runtime import IssuerDirectory, Runtime
    from plumbing.status_channel import StatusChannel
    from shomei.app import make_app

    signer, _issuers, links, url = rolled
    pool = await db.create_pool(url, min_size=1, max_size=4)
    rt = Runtime(cfg=config.load(env={}).replace(database_url=url), clock=FixedClock(T0), pool=pool, signer=signer,
                 directory=IssuerDirectory(pool), resident_key=secrets.token_bytes(32), clients=ClientCache(pool),
                 status=StatusChannel(url, pool))
    await rt.reload_issuers()
    client = TestClient(TestServer(make_app(rt)))
    await client.start_server()
    try:
        listed = {(c["ca"], c["generation"]): c for c in (await (await client.get("/ca")).json())["cas"]}
        assert listed[("signing", 2)]["links"] == ["/ca/signing/g2/new-with-old.crt", "/ca/signing/g2/old-with-new.crt"]
        assert listed[("signing", 1)]["links"] == [] and listed[("auth", 1)]["links"] == []
        for link in links:
            stem = link.direction.replace("_", "-")
            resp = await client.get(f"/ca/signing/g2/{stem}.crt")
            assert resp.status == 200 and resp.content_type == "application/pkix-cert"
            assert await resp.read() == link.certificate
            resp = await client.get(f"/ca/signing/g2/{stem}.pem")
            pem = x509.load_pem_x509_certificate(await resp.read())
            assert pem.public_bytes(Encoding.DER) == link.certificate
        for path in ("/ca/signing/g1/new-with-old.crt", "/ca/auth/g2/new-with-old.crt", "/ca/signing/g2/other.crt"):
            resp = await client.get(path)
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_link_certificate", path
    finally:
        await client.close()
        await pool.close()


async def test_a_replaced_generation_retires_after_its_last_certificate(pg, keys, tmp_path):
    """g1 keeps publishing after the rollover while a certificate it issued is valid; once that has
    expired, a final CRL (nextUpdate at g1's own end, no delta named) and g1 is retired: no more CRLs."""
    async with own_database(pg) as url:
        await _retirement(url, keys, tmp_path)


async def _retirement(url, keys, tmp_path):
    from ca_core.ca import FixedIssuers
    from ca_core.clock import FixedClock
    from ca_core.kinds import KINDS
    from ca_core.profiles import CertificateProfile
    from crl_publisher.publisher import Publisher
    from issuance.service import IssuanceService
    from storage import clients
    from tests.services.support import CardKeys, issue_request

    pool = await db.create_pool(url, min_size=1, max_size=4)
    signer, cfg = SoftwareSigner(), config.load(env={})
    profiles = {kind: CertificateProfile.from_config(cfg, kind) for kind in KINDS}
    try:
        async with pool.acquire() as conn, conn.transaction():
            await ca_keys.ensure_generations(conn, signer, cfg.ca, T0)
            terminal = await clients.register(conn, kind="terminal", name="t", municipality_code="131016")
        async with pool.acquire() as conn:
            issuers = IssuerSet(await cas.list_generations(conn))
        issuance = IssuanceService(pool=pool, signer=signer, clock=FixedClock(T0), issuers=FixedIssuers(issuers),
                                   profiles=profiles, settings=cfg.issuance, resident_key=secrets.token_bytes(32))
        card_end = (T0 + dt.timedelta(days=200)).date().isoformat()
        result = await issuance.issue(terminal, "clerk", issue_request({"auth": CardKeys(keys).next()}, clock=issuance.clock,
                                                                       card_expires_on=card_end))
        cert_end = result.certificates[0].not_after
        async with pool.acquire() as conn, conn.transaction():
            await ca_keys.new_generation(conn, signer, cfg.ca, "auth", T0 + dt.timedelta(days=30))
            issuers = IssuerSet(await cas.list_generations(conn))
        g1 = next(i for i in issuers if (i.ca_id, i.generation) == ("auth", 1))

        def publisher(at):
            return Publisher(pool=pool, signer=signer, clock=FixedClock(at), issuers=FixedIssuers(issuers),
                             profiles=profiles, settings=cfg.crl, partition_size=cfg.issuance.partition_size,
                             out=tmp_path / "crl")

        def g1_outcomes(outcomes):
            return [o for o in outcomes if o.target.issuer.db_id == g1.db_id and o.published]

        before = g1_outcomes(await publisher(T0 + dt.timedelta(days=60)).run_due())
        assert before and not any(o.target.final for o in before)  # still publishing, not final
        async with pool.acquire() as conn:
            assert await cas.retired_generation_ids(conn) == set()
        after_end = cert_end + dt.timedelta(days=1)
        final = g1_outcomes(await publisher(after_end).run_due())
        assert final and all(o.target.final and o.target.kind == "base" for o in final)
        crl = x509.load_der_x509_crl((tmp_path / "crl" / "auth" / "g1" / "full.crl").read_bytes())
        assert crl.next_update_utc == g1.not_after
        assert crl.is_signature_valid(x509.load_der_x509_certificate(g1.certificate_der).public_key())
        names = {e.oid for e in crl.extensions}
        assert x509.oid.ExtensionOID.FRESHEST_CRL not in names
        async with pool.acquire() as conn:
            assert await cas.retired_generation_ids(conn) == {g1.db_id}
        assert not g1_outcomes(await publisher(after_end + dt.timedelta(days=3)).run_due())  # nothing more
    finally:
        await pool.close()
