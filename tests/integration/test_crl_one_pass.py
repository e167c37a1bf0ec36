"""Every complete CRL of a CA generation in one pass (Publisher.publish_complete): the full CRL and each
partition's CRL from ONE snapshot, every entry read once; the full CRL's content in PostgreSQL refers to
the partition CRLs' entry parts (migration 0017). A host reassembles it and checks it like any other
copy; pruning never deletes a part a kept CRL refers to; a damaged referenced part is refused."""
from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from benchmarks.bench_crl import load
from crl_publisher.copies import Copies, CopyRefused
from crl_publisher.files import number_of
from crl_publisher.publisher import Publisher, Target
from storage import crls

PARTITION_SIZE = 50
START = 1_500_000_000  # certificate ids clear of the issuance sequence and of the benchmarks'


@pytest.fixture
async def partitions(rt):
    """Three or four more partitions of the signing CA's current generation, one certificate in two revoked
    (rows as the CRL benchmarks load them): (first, last) partition numbers."""
    issuer = rt.issuers.current("signing")
    async with rt.pool.acquire() as conn:
        have = await conn.fetchval("SELECT count(*) FROM certificate WHERE id > $1 AND id <= $1 + 1000", START)
    if not have:
        import asyncpg

        conn = await asyncpg.connect(rt.cfg.database_owner_url)
        try:
            await load(conn, gen_id=issuer.db_id, start=START, count=3 * PARTITION_SIZE,
                       partition_size=PARTITION_SIZE, revoke_one_in=2)
        finally:
            await conn.close()
    first = (START + 1) // PARTITION_SIZE
    return first, (START + 3 * PARTITION_SIZE) // PARTITION_SIZE


@pytest.fixture
def other_host(rt, tmp_path):
    return Copies(pool=rt.pool, out=tmp_path / "other-host", issuers=rt.directory)


async def _expected(rt, issuer, partition: int | None) -> set[int]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT serial FROM revocation WHERE ca_generation_id = $1 AND released_at IS NULL"
            " AND effective_at IS NOT NULL AND cert_not_after >= now()"
            + (" AND partition = $2" if partition is not None else ""),
            issuer.db_id, *([partition] if partition is not None else []))
    return {int.from_bytes(r["serial"], "big") for r in rows}


async def _one_pass(rt, **kw) -> tuple[Publisher, dict[str, crls.PublishedCRL]]:
    pub = Publisher.from_runtime(rt)
    outcomes = await pub.publish_complete(rt.issuers.current("signing"), **kw)
    assert outcomes[0].target.scope == crls.FULL
    return pub, {o.target.scope: o.published for o in outcomes if o.published}


async def _refs(rt, crl_id: int) -> list:
    async with rt.pool.acquire() as conn:
        return await conn.fetch("SELECT part, source_id, first_part, last_part FROM crl_content_ref"
                                " WHERE crl_id = $1 ORDER BY part", crl_id)


async def _has_content(rt, crl_id: int) -> bool:
    async with rt.pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM crl_content WHERE crl_id = $1)", crl_id))


async def test_one_pass_lists_exactly_the_revoked_serials_and_verifies(rt, partitions, tmp_path):
    issuer = rt.issuers.current("signing")
    key = x509.load_der_x509_certificate(issuer.certificate_der).public_key()
    pub, done = await _one_pass(rt)
    async with rt.pool.acquire() as conn:
        every = await crls.partitions(conn, issuer.db_id)
    assert set(done) == {crls.FULL} | {crls.partition_scope(p) for p in every}
    snapshots = {p.snapshot for p in done.values()}
    assert len(snapshots) == 1  # one snapshot for every CRL of the pass
    full_der = (pub.out / Target(issuer, crls.FULL, "base").path).read_bytes()
    full = x509.load_der_x509_crl(full_der)
    assert full.is_signature_valid(key)
    serials = [e.serial_number for e in full]
    assert len(serials) == len(set(serials)) == done[crls.FULL].entries
    assert set(serials) == await _expected(rt, issuer, None)
    assert full.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == done[crls.FULL].number
    with pytest.raises(x509.ExtensionNotFound):
        full.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    # the full CRL lists the partitions' entries partition by partition, each in serial order
    listed = []
    for p in every:
        target = Target(issuer, crls.partition_scope(p), "base")
        crl = x509.load_der_x509_crl((pub.out / target.path).read_bytes())
        assert crl.is_signature_valid(key)
        assert crl.last_update_utc == full.last_update_utc
        mine = [e.serial_number for e in crl]
        assert mine == sorted(mine) and set(mine) == await _expected(rt, issuer, p)
        assert crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).critical
        listed += mine
    assert listed == serials
    first, last = partitions
    assert sum(1 for p in every if first <= p <= last) == last - first + 1 >= 3
    # OpenSSL agrees
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(x509.load_der_x509_certificate(issuer.certificate_der).public_bytes(serialization.Encoding.PEM))
    crl_pem = tmp_path / "full.pem"
    crl_pem.write_bytes(full.public_bytes(serialization.Encoding.PEM))
    res = subprocess.run(["openssl", "crl", "-in", str(crl_pem), "-CAfile", str(ca_pem), "-noout", "-verify"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "verify OK" in res.stdout + res.stderr, res.stdout + res.stderr


async def test_a_host_copy_of_the_full_crl_stored_by_reference_is_identical(rt, partitions, other_host):
    issuer = rt.issuers.current("signing")
    pub, done = await _one_pass(rt)
    full = done[crls.FULL]
    refs = await _refs(rt, full.id)
    part_ids = {p.id for s, p in done.items() if s != crls.FULL and p.entries}
    assert {r["source_id"] for r in refs} == part_ids  # no second copy of any partition's entries
    async with rt.pool.acquire() as conn:
        own = await conn.fetchval("SELECT sum(octet_length(data)) FROM crl_content WHERE crl_id = $1", full.id)
    assert own < 4096  # only its head and tail
    path = Target(issuer, crls.FULL, "base").path
    copy = await other_host.current(path, fresh=True)
    assert copy.read_bytes() == (pub.out / path).read_bytes() and number_of(copy) == full.number
    for scope, p in done.items():
        assert (await other_host.current(p.path, fresh=True)).read_bytes() == (pub.out / p.path).read_bytes()


async def test_a_delta_after_the_pass_lists_the_changes_since_its_snapshot(rt, partitions):
    issuer = rt.issuers.current("signing")
    first, _ = partitions
    pub, done = await _one_pass(rt)
    scope = crls.partition_scope(first)
    for s in (crls.FULL, scope):
        delta = (await pub.publish(Target(issuer, s, "delta"))).published
        assert delta.base_id == done[s].id and delta.number > done[s].number
        crl = x509.load_der_x509_crl((pub.out / delta.path).read_bytes())
        assert crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == done[s].number


async def test_pruning_keeps_the_parts_a_kept_full_crl_refers_to(rt, partitions, tmp_path):
    issuer = rt.issuers.current("signing")
    first, _ = partitions
    scope = crls.partition_scope(first)
    pub, done = await _one_pass(rt)
    full, referenced = done[crls.FULL], done[scope]
    for _ in range(3):  # the partition alone, three times: its pass issue is no longer among its latest two
        assert (await pub.publish(Target(issuer, scope, "base"))).published
    assert await _has_content(rt, referenced.id)  # kept: the latest full CRL refers to it
    fresh = Copies(pool=rt.pool, out=tmp_path / "fresh-host", issuers=rt.directory)
    copy = await fresh.current(full.path, fresh=True)
    assert number_of(copy) == full.number and copy.read_bytes() == (pub.out / full.path).read_bytes()
    _, second = await _one_pass(rt)
    assert await _has_content(rt, referenced.id) and await _has_content(rt, full.id)  # latest two fulls
    _, third = await _one_pass(rt)
    # the first full CRL is no longer among the latest two: its content and references go, and so do the
    # parts only it referred to; what the kept full CRLs refer to stays
    assert not await _has_content(rt, full.id) and not await _refs(rt, full.id)
    assert not await _has_content(rt, referenced.id)
    for kept in (second, third):
        for r in await _refs(rt, kept[crls.FULL].id):
            assert await _has_content(rt, r["source_id"])
    copy = await Copies(pool=rt.pool, out=tmp_path / "third-host", issuers=rt.directory).current(full.path, fresh=True)
    assert number_of(copy) == third[crls.FULL].number


async def test_a_tampered_referenced_part_is_refused(rt, partitions, other_host, caplog):
    issuer = rt.issuers.current("signing")
    pub, good = await _one_pass(rt)
    path = Target(issuer, crls.FULL, "base").path
    assert number_of(await other_host.current(path, fresh=True)) == good[crls.FULL].number
    _, bad = await _one_pass(rt)
    ref = (await _refs(rt, bad[crls.FULL].id))[0]
    async with rt.pool.acquire() as conn:  # one octet of a partition's entries, as the full CRL refers to them
        await conn.execute("UPDATE crl_content SET data = set_byte(data, 5, get_byte(data, 5) # 1)"
                           " WHERE crl_id = $1 AND part = $2", ref["source_id"], ref["first_part"])
    served = await other_host.current(path, fresh=True)
    assert number_of(served) == good[crls.FULL].number  # the last good copy stays
    assert "refused" in caplog.text
    fresh = Copies(pool=rt.pool, out=other_host.out.with_name("fresh-host"), issuers=rt.directory)
    with pytest.raises(CopyRefused):
        await fresh.current(path, fresh=True)
    assert not (fresh.out / path).exists()
    await _one_pass(rt)  # the next pass repairs every host


async def test_a_partition_whose_lease_is_held_elsewhere_is_still_in_the_full_crl(rt, partitions):
    issuer = rt.issuers.current("signing")
    first, _ = partitions
    scope = crls.partition_scope(first)
    async with rt.pool.acquire() as holder:
        assert await crls.try_lease(holder, issuer.db_id, scope)
        try:
            pub = Publisher.from_runtime(rt)
            outcomes = {o.target.scope: o for o in await pub.publish_complete(issuer)}
        finally:
            await crls.release_lease(holder, issuer.db_id, scope)
    assert outcomes[scope].published is None and "lease" in outcomes[scope].skipped
    full = outcomes[crls.FULL].published
    crl = x509.load_der_x509_crl((pub.out / full.path).read_bytes())
    assert {e.serial_number for e in crl} == await _expected(rt, issuer, None)
    assert await _expected(rt, issuer, first) <= {e.serial_number for e in crl}
    copy = await Copies(pool=rt.pool, out=pub.out.with_name("lease-host"), issuers=rt.directory).current(
        full.path, fresh=True)
    assert copy.read_bytes() == (pub.out / full.path).read_bytes()


async def test_the_full_lease_held_elsewhere_publishes_nothing(rt, partitions):
    issuer = rt.issuers.current("signing")
    async with rt.pool.acquire() as holder:
        assert await crls.try_lease(holder, issuer.db_id, crls.FULL)
        try:
            outcomes = await Publisher.from_runtime(rt).publish_complete(issuer)
        finally:
            await crls.release_lease(holder, issuer.db_id, crls.FULL)
    assert not [o for o in outcomes if o.published]
    async with rt.pool.acquire() as conn:  # and every lease the pass took was given back
        assert await crls.try_lease(conn, issuer.db_id, crls.partition_scope(partitions[0]))
        await crls.release_lease(conn, issuer.db_id, crls.partition_scope(partitions[0]))


async def test_a_failure_mid_pass_keeps_the_last_good_full_crl(rt, partitions, monkeypatch):
    issuer = rt.issuers.current("signing")
    pub, good = await _one_pass(rt)
    path = pub.out / good[crls.FULL].path
    before = path.read_bytes()
    calls = {"n": 0}
    real = crls.entry_page

    async def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("database gone mid-pass")
        return await real(*a, **kw)

    monkeypatch.setattr(crls, "entry_page", failing)
    with pytest.raises(RuntimeError):
        await pub.publish_complete(issuer)
    monkeypatch.undo()
    assert path.read_bytes() == before
    async with rt.pool.acquire() as conn:
        assert (await crls.latest(conn, issuer.db_id, crls.FULL, "base")).id == good[crls.FULL].id
        assert not await conn.fetchval("SELECT count(*) FROM crl_content c WHERE NOT EXISTS"
                                       " (SELECT 1 FROM crl WHERE crl.id = c.crl_id)")
    assert not [n for n in path.parent.iterdir() if n.name.endswith(".tmp")]
    _, again = await _one_pass(rt)  # numbers went forward, never back
    assert again[crls.FULL].number > good[crls.FULL].number + 1


async def test_the_scheduler_publishes_the_daily_issue_in_one_pass(rt, partitions):
    issuer = rt.issuers.current("signing")
    from ca_core.clock import FixedClock

    pub = Publisher.from_runtime(rt)
    pub.settings = rt.cfg.crl.replace(full_interval_minutes=0)  # every complete CRL is due
    async with rt.pool.acquire() as conn:  # not before a CRL other tests dated ahead (dates never go back)
        last = await conn.fetchval("SELECT max(this_update) FROM crl")
    pub.clock = FixedClock(max(rt.clock.now(), last) + dt.timedelta(seconds=1) if last else rt.clock.now())
    done = [o for o in await pub.run_due() if o.published and o.target.issuer.db_id == issuer.db_id
            and o.target.kind == "base"]
    full = next(o.published for o in done if o.target.scope == crls.FULL)
    async with rt.pool.acquire() as conn:
        every = await crls.partitions(conn, issuer.db_id)
    # the first full CRL of the tick and every partition's CRL came from one pass (one snapshot)
    assert {o.target.scope for o in done if o.published.snapshot == full.snapshot} == (
        {crls.FULL} | {crls.partition_scope(p) for p in every})
    assert await _refs(rt, full.id)
