"""CRLs kept in PostgreSQL and copied to each host's folder: a host that did not publish a CRL serves the
same bytes as the one that did, checked against the CA's signature first; bytes that do not check out
are never served; only the latest two CRLs of a path keep their content; a host's file never goes back.
Two hosts here are two folders on one database (tests/e2e/test_multi_host.py runs two `shomei serve`)."""
from __future__ import annotations

import asyncio
import os

import pytest
from cryptography import x509

from crl_publisher.copies import Copies, CopyRefused
from crl_publisher.files import number_of
from crl_publisher.publisher import Publisher, Target
from storage import crls


@pytest.fixture
def other_host(rt, tmp_path):
    return Copies(pool=rt.pool, out=tmp_path / "other-host", issuers=rt.directory)


async def _content(rt, crl_id: int) -> bytes:
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            return b"".join([bytes(d) async for d in crls.content(conn, crl_id)])


async def test_another_host_serves_the_same_bytes(rt, other_host):
    pub = Publisher.from_runtime(rt)
    issuer = rt.issuers.current("signing")
    for target in (Target(issuer, "full", "base"), Target(issuer, "full", "delta")):
        done = (await pub.publish(target)).published
        here = (pub.out / target.path).read_bytes()
        assert await _content(rt, done.id) == here and len(here) == done.bytes
        there = await other_host.current(target.path, fresh=True)
        assert there.read_bytes() == here
        assert os.stat(there).st_mtime_ns == os.stat(pub.out / target.path).st_mtime_ns  # same ETag, Last-Modified
        crl = x509.load_der_x509_crl(here)
        assert crl.is_signature_valid(x509.load_der_x509_certificate(issuer.certificate_der).public_key())


async def test_only_the_latest_two_keep_their_content(rt):
    pub = Publisher.from_runtime(rt)
    target = Target(rt.issuers.current("auth"), "full", "base")
    ids = [(await pub.publish(target)).published.id for _ in range(4)]
    async with rt.pool.acquire() as conn:
        kept = {r["crl_id"] for r in await conn.fetch("SELECT DISTINCT crl_id FROM crl_content WHERE crl_id = ANY($1)", ids)}
        rows = await conn.fetchval("SELECT count(*) FROM crl WHERE id = ANY($1)", ids)
    assert kept == set(ids[-2:]) and rows == 4


async def test_bytes_that_do_not_check_out_are_not_served(rt, other_host, caplog):
    pub = Publisher.from_runtime(rt)
    target = Target(rt.issuers.current("auth"), "full", "base")
    good = (await pub.publish(target)).published
    copy = await other_host.current(target.path, fresh=True)
    assert number_of(copy) == good.number
    bad = (await pub.publish(target)).published
    async with rt.pool.acquire() as conn:  # one octet of the stored CRL changed
        await conn.execute("UPDATE crl_content SET data = set_byte(data, 0, get_byte(data, 0) # 1)"
                           " WHERE crl_id = $1 AND part = 0", bad.id)
    served = await other_host.current(target.path, fresh=True)
    assert number_of(served) == good.number  # the last good copy stays
    assert "refused" in caplog.text
    fresh = Copies(pool=rt.pool, out=other_host.out.with_name("third-host"), issuers=rt.directory)
    with pytest.raises(CopyRefused):  # a host with no copy has nothing to serve instead
        await fresh.current(target.path, fresh=True)
    assert not (fresh.out / target.path).exists()
    await pub.publish(target)  # the next publication repairs every host
    assert number_of(await fresh.current(target.path, fresh=True)) == bad.number + 1


async def test_a_host_file_never_goes_back(rt, tmp_path):
    from crl_publisher.files import install

    pub = Publisher.from_runtime(rt)
    target = Target(rt.issuers.current("auth"), "full", "base")
    first = (pub.out / target.path)
    await pub.publish(target)
    older = first.read_bytes()
    await pub.publish(target)
    newer = first.read_bytes()
    tmp = first.with_name(".stale")
    tmp.write_bytes(older)
    assert not install(tmp, first, number_of(tmp))  # an older copy arriving late is dropped
    assert first.read_bytes() == newer and not tmp.exists()


async def test_served_over_http_by_a_host_that_did_not_publish(rt, http, tmp_path):
    """The application's CRL endpoint serves from its own folder, copied from the database: here the
    publisher writes into a folder the application does not read."""
    import dataclasses

    cfg = rt.cfg.replace(crl=rt.cfg.crl.replace(output_dir=str(tmp_path / "publishing-host")))
    pub = Publisher.from_runtime(dataclasses.replace(rt, cfg=cfg))
    target = Target(rt.issuers.current("signing"), "full", "base")
    done = (await pub.publish(target)).published
    for _ in range(30):  # within a second of the publication
        resp = await http.get("/crl/signing/full.crl")
        body = await resp.read()
        if body == (pub.out / target.path).read_bytes():
            break
        await asyncio.sleep(0.1)
    assert body == (pub.out / target.path).read_bytes() and x509.load_der_x509_crl(body).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number == done.number
