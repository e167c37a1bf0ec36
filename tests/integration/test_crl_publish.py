"""CRL publishing on the real PostgreSQL and SoftHSM token: issue through the API, revoke and hold
through the storage functions (the real write path), publish, fetch over HTTP, and check the CRLs
as a relying party would (cryptography's parser, openssl)."""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import CRLEntryExtensionOID

from ca_core.revocation import Reason, encode_entry
from crl_publisher.publisher import Publisher, Target, output_dir
from storage import certificates as cert_store, crls, revocations as rev_store
from tests.helpers import certs_by_kind, issue, issue_body


# -- helpers ---------------------------------------------------------------------------------------

async def _issue(http, terminal, keys, kinds=("signing", "auth")) -> dict:
    return certs_by_kind(await issue(http, terminal, issue_body(keys, kinds=kinds)))


async def _revoke(rt, cert: x509.Certificate, reason=Reason.key_compromise, invalidity=None):
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            rec = await cert_store.by_serial(conn, cert.serial_number, for_update=True)
            now = rt.clock.now()
            await rev_store.apply_revocation(conn, rec, reason=int(reason), at=now, effective_at=now,
                                             source="operator", source_ref="test", invalidity_date=invalidity,
                                             entry_der=encode_entry(rec.serial, now, Reason(reason), invalidity))


async def _hold(rt, cert):
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            rec = await cert_store.by_serial(conn, cert.serial_number, for_update=True)
            now = rt.clock.now()
            await rev_store.place_hold(conn, rec, at=now,
                                       entry_der=encode_entry(rec.serial, now, Reason.certificate_hold))


async def _release(rt, cert):
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            rec = await cert_store.by_serial(conn, cert.serial_number, for_update=True)
            await rev_store.release_hold(conn, rec, at=rt.clock.now())


def _partition_of(cert: x509.Certificate) -> str:
    url = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
    return url.rsplit("/", 1)[1][:-len(".crl")]


async def _publish(rt, ca: str, scope: str, kind: str):
    issuer = rt.issuers.current(ca)
    outcome = await Publisher.from_runtime(rt).publish(Target(issuer, scope, kind))
    assert outcome.published is not None, outcome.skipped
    return outcome.published


async def _fetch(http, path: str, **headers):
    resp = await http.get(f"/crl/{path}", headers=headers)
    return resp, await resp.read()


async def _crl(http, path: str) -> x509.CertificateRevocationList:
    resp, body = await _fetch(http, path)
    assert resp.status == 200, body[:200]
    assert resp.headers["Content-Type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(body)


def _serials(crl) -> dict[int, int | None]:
    """serial -> reason code (None when absent)."""
    out = {}
    for r in crl:
        try:
            out[r.serial_number] = r.extensions.get_extension_for_oid(CRLEntryExtensionOID.CRL_REASON).value.reason
        except x509.ExtensionNotFound:
            out[r.serial_number] = None
    return out


async def _expected(rt, ca: str, partition: int | None) -> set[int]:
    """What the database says a complete CRL of this scope must list now."""
    issuer = rt.issuers.current(ca)
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT serial FROM revocation WHERE ca_generation_id = $1 AND released_at IS NULL"
            " AND effective_at IS NOT NULL AND cert_not_after >= now()"
            + (" AND partition = $2" if partition is not None else ""),
            issuer.db_id, *([partition] if partition is not None else []))
    return {int.from_bytes(r["serial"], "big") for r in rows}


def _ca(rt, ca):
    return x509.load_der_x509_certificate(rt.issuers.current(ca).certificate_der)


# -- tests -----------------------------------------------------------------------------------------

async def test_revoked_serials_in_their_partition_and_full_crl(rt, http, terminal, keys):
    a, b, c = [await _issue(http, terminal, keys) for _ in range(3)]
    invalid_since = rt.clock.now() - dt.timedelta(days=2)
    await _revoke(rt, a["signing"], Reason.key_compromise, invalidity=invalid_since)
    await _revoke(rt, b["signing"], Reason.unspecified)
    await _hold(rt, a["auth"])
    part = _partition_of(a["signing"])
    scope = "p" + part.split("-p")[1]
    for ca in ("signing", "auth"):
        await _publish(rt, ca, scope, "base")
        await _publish(rt, ca, "full", "base")

    signing_part = await _crl(http, f"signing/{part}.crl")
    signing_full = await _crl(http, "signing/full.crl")
    auth_part = await _crl(http, f"auth/{_partition_of(a['auth'])}.crl")
    for crl, ca in ((signing_part, "signing"), (signing_full, "signing"), (auth_part, "auth")):
        assert crl.is_signature_valid(_ca(rt, ca).public_key())
        assert crl.issuer == _ca(rt, ca).subject
        assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(hours=48)
    # exactly what the database says, in serial order
    assert set(_serials(signing_part)) == await _expected(rt, "signing", int(scope[1:]))
    assert set(_serials(signing_full)) == await _expected(rt, "signing", None)
    assert [r.serial_number for r in signing_full] == sorted(r.serial_number for r in signing_full)
    s = _serials(signing_full)
    assert s[a["signing"].serial_number] == x509.ReasonFlags.key_compromise
    assert s[b["signing"].serial_number] is None  # unspecified: reasonCode absent (RFC 5280 5.3.1)
    assert c["signing"].serial_number not in s
    entry = signing_full.get_revoked_certificate_by_serial_number(a["signing"].serial_number)
    inv = entry.extensions.get_extension_for_oid(CRLEntryExtensionOID.INVALIDITY_DATE).value.invalidity_date_utc
    assert inv == invalid_since
    assert _serials(auth_part)[a["auth"].serial_number] == x509.ReasonFlags.certificate_hold
    assert a["signing"].serial_number not in _serials(auth_part)

    # the partition CRL names the certificates' distribution point, critically; full CRL has no IDP
    idp = signing_part.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    cdp = a["signing"].extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name
    assert idp.value.full_name == cdp
    with pytest.raises(x509.ExtensionNotFound):
        signing_full.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    fresh = signing_part.extensions.get_extension_for_class(x509.FreshestCRL).value[0].full_name
    assert fresh == a["signing"].extensions.get_extension_for_class(x509.FreshestCRL).value[0].full_name
    aki = signing_full.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == rt.issuers.current("signing").key_id


async def test_delta_lists_changes_since_base_until_the_next_base(rt, http, terminal, keys):
    held, later, good = [await _issue(http, terminal, keys, kinds=("auth",)) for _ in range(3)]
    await _hold(rt, held["auth"])
    await _hold(rt, good["auth"])
    part = _partition_of(held["auth"])
    scope = "p" + part.split("-p")[1]
    base = await _publish(rt, "auth", scope, "base")
    await _release(rt, held["auth"])      # on hold in the base: removeFromCRL
    await _revoke(rt, later["auth"], Reason.cessation_of_operation)  # new
    await _revoke(rt, good["auth"], Reason.key_compromise)           # hold turned into a revocation
    delta = await _publish(rt, "auth", scope, "delta")
    assert delta.number > base.number
    d = await _crl(http, f"auth/{part}-delta.crl")
    assert d.is_signature_valid(_ca(rt, "auth").public_key())
    ind = d.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert ind.critical and ind.value.crl_number == base.number
    assert d.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == delta.number
    # same scope as the base: the same IDP (RFC 5280 5.2.4)
    b = await _crl(http, f"auth/{part}.crl")
    assert (d.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
            == b.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value)
    with pytest.raises(x509.ExtensionNotFound):
        d.extensions.get_extension_for_class(x509.FreshestCRL)
    s = _serials(d)
    assert s[held["auth"].serial_number] == x509.ReasonFlags.remove_from_crl
    assert s[later["auth"].serial_number] == x509.ReasonFlags.cessation_of_operation
    assert s[good["auth"].serial_number] == x509.ReasonFlags.key_compromise
    # still in the next delta (changes since the same base) ...
    await _publish(rt, "auth", scope, "delta")
    assert set(_serials(await _crl(http, f"auth/{part}-delta.crl"))) >= set(s)
    # ... and gone from the delta after the next base, which has them (or not, for the released hold)
    base2 = await _publish(rt, "auth", scope, "base")
    b2 = _serials(await _crl(http, f"auth/{part}.crl"))
    assert held["auth"].serial_number not in b2
    assert b2[later["auth"].serial_number] == x509.ReasonFlags.cessation_of_operation
    await _publish(rt, "auth", scope, "delta")
    d2 = await _crl(http, f"auth/{part}-delta.crl")
    assert d2.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == base2.number
    assert not set(_serials(d2)) & set(s)


async def test_change_committed_after_the_base_snapshot_is_in_the_delta(rt, http, terminal, keys):
    """A revocation whose transaction was still open while the base was built, with an effective time
    before the base's thisUpdate, is not lost: it is in the delta."""
    cert = (await _issue(http, terminal, keys, kinds=("auth",)))["auth"]
    part = _partition_of(cert)
    scope = "p" + part.split("-p")[1]
    async with rt.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        rec = await cert_store.by_serial(conn, cert.serial_number, for_update=True)
        early = rt.clock.now() - dt.timedelta(minutes=5)
        await rev_store.apply_revocation(conn, rec, reason=int(Reason.key_compromise), at=early, effective_at=early,
                                         source="operator", source_ref="test",
                                         entry_der=encode_entry(rec.serial, early, Reason.key_compromise))
        base = await _publish(rt, "auth", scope, "base")
        await tx.commit()
    assert cert.serial_number not in _serials(await _crl(http, f"auth/{part}.crl"))
    await _publish(rt, "auth", scope, "delta")
    d = await _crl(http, f"auth/{part}-delta.crl")
    assert d.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == base.number
    assert cert.serial_number in _serials(d)


async def test_online_revocation_becomes_effective_in_the_next_crl(rt, http, terminal, keys):
    cert = (await _issue(http, terminal, keys, kinds=("auth",)))["auth"]
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            rec = await cert_store.by_serial(conn, cert.serial_number, for_update=True)
            now = rt.clock.now()
            await rev_store.accept_pending(conn, rec, reason=int(Reason.cessation_of_operation), at=now,
                                           source="online", source_ref="test-online")
    await _publish(rt, "auth", "full", "base")
    assert _serials(await _crl(http, "auth/full.crl"))[cert.serial_number] == x509.ReasonFlags.cessation_of_operation
    async with rt.pool.acquire() as conn:
        assert (await cert_store.by_serial(conn, cert.serial_number)).status == "revoked"


async def test_expired_certificates_are_dropped(rt, http, terminal, keys):
    old, live = [(await _issue(http, terminal, keys, kinds=("auth",)))["auth"] for _ in range(2)]
    await _revoke(rt, old)
    await _revoke(rt, live)
    async with rt.pool.acquire() as conn:  # the certificate expired yesterday
        await conn.execute("UPDATE revocation SET cert_not_after = now() - interval '1 day' WHERE serial = $1",
                           old.serial_number.to_bytes(16, "big"))
    await _publish(rt, "auth", "full", "base")
    crl = await _crl(http, "auth/full.crl")
    s = _serials(crl)
    assert live.serial_number in s and old.serial_number not in s
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_oid(x509.ObjectIdentifier("2.5.29.60"))  # expiredCertsOnCRL


async def test_numbers_never_go_backwards_and_deltas_share_them(rt):
    issuer = rt.issuers.current("signing")
    pub = Publisher.from_runtime(rt)
    numbers = []
    for kind in ("base", "delta", "delta", "base", "delta"):
        numbers.append((await pub.publish(Target(issuer, "full", kind))).published.number)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    # a second publisher (a new process would read the same table) continues the sequence
    assert (await Publisher.from_runtime(rt).publish(Target(issuer, "full", "base"))).published.number > numbers[-1]


async def test_lease_held_elsewhere_skips_and_leaves_the_crl(rt, http):
    issuer = rt.issuers.current("signing")
    await _publish(rt, "signing", "full", "base")
    before = (output_dir(rt.cfg) / "signing" / f"g{issuer.generation}" / "full.crl").read_bytes()
    async with rt.pool.acquire() as other:
        assert await crls.try_lease(other, issuer.db_id, "full")
        try:
            outcome = await Publisher.from_runtime(rt).publish(Target(issuer, "full", "base"))
        finally:
            await crls.release_lease(other, issuer.db_id, "full")
    assert outcome.published is None and "lease" in outcome.skipped
    assert (output_dir(rt.cfg) / "signing" / f"g{issuer.generation}" / "full.crl").read_bytes() == before


async def test_concurrent_publishers_publish_one_at_a_time(rt):
    issuer = rt.issuers.current("auth")
    outcomes = await asyncio.gather(*[Publisher.from_runtime(rt).publish(Target(issuer, "full", "base")) for _ in range(4)])
    done = [o.published.number for o in outcomes if o.published]
    assert done and len(done) == len(set(done))
    assert all(o.published or "lease" in o.skipped for o in outcomes)


async def test_failure_mid_publish_keeps_the_last_good_crl(rt, monkeypatch):
    from ca_core.errors import HSMError

    issuer = rt.issuers.current("signing")
    good = await _publish(rt, "signing", "full", "base")
    path = output_dir(rt.cfg) / good.path
    before = path.read_bytes()

    async def broken(*a, **kw):
        raise HSMError("token gone")

    monkeypatch.setattr(rt.signer, "sign_digest", broken)
    with pytest.raises(HSMError):
        await Publisher.from_runtime(rt).publish(Target(issuer, "full", "base"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]
    after = await _publish(rt, "signing", "full", "base")
    assert after.number > good.number
    assert (path.parent / "full.crl.prev").read_bytes() == before


async def test_http_caching_headers_and_conditional_get(rt, http):
    pub = await _publish(rt, "auth", "full", "base")
    resp, body = await _fetch(http, "auth/full.crl")
    assert resp.status == 200 and len(body) == pub.bytes
    crl = x509.load_der_x509_crl(body)
    max_age = int(resp.headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    remaining = (crl.next_update_utc - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 0 < max_age <= remaining + 1
    assert resp.headers["Last-Modified"] == crl.last_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
    etag = resp.headers["ETag"]
    r304, b304 = await _fetch(http, "auth/full.crl", **{"If-None-Match": etag})
    assert r304.status == 304 and b304 == b""
    r304, _ = await _fetch(http, "auth/full.crl", **{"If-Modified-Since": resp.headers["Last-Modified"]})
    assert r304.status == 304
    r200, _ = await _fetch(http, "auth/full.crl", **{"If-None-Match": '"other"'})
    assert r200.status == 200
    gen = rt.issuers.current("auth").generation
    same, body2 = await _fetch(http, f"auth/g{gen}/full.crl")
    assert same.status == 200 and body2 == body
    for bad in ("auth/g1-p999999.crl", "auth/nope.crl", "nobody/full.crl", "auth/g9/full.crl", "auth/..%2Fx.crl"):
        r, _ = await _fetch(http, bad)
        assert r.status == 404, bad


async def test_metrics_report_published_crls(rt, http):
    await _publish(rt, "auth", "full", "base")
    body = await (await http.get("/metrics")).text()
    gen = rt.issuers.current("auth").generation
    assert f'shomei_crl_number{{ca="auth-g{gen}",kind="full"}}' in body
    assert "shomei_crl_publish_seconds_bucket" in body


async def test_scheduler_publishes_what_is_due_once(rt, http):
    pub = Publisher.from_runtime(rt)
    await pub.run_due()  # whatever was due in this session
    second = await pub.run_due()
    assert not [o for o in second if o.published], [str(o.target) for o in second if o.published]
    # every partition that certificates name has a CRL and a delta
    for issuer in pub.generations():
        async with rt.pool.acquire() as conn:
            parts = await crls.partitions(conn, issuer.db_id)
        for p in parts:
            for kind in ("base", "delta"):
                assert (output_dir(rt.cfg) / Target(issuer, f"p{p}", kind).path).exists()


# -- openssl as the relying party ------------------------------------------------------------------

def _pem(cert: x509.Certificate, path: Path) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _crl_pem(der: bytes, path: Path) -> str:
    path.write_bytes(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM))
    return str(path)


def _openssl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


async def test_openssl_verifies_crls_and_rejects_revoked_certificates(rt, http, terminal, keys, ca_pem, tmp_path):
    revoked, good = [(await _issue(http, terminal, keys, kinds=("signing",)))["signing"] for _ in range(2)]
    await _revoke(rt, revoked)
    part = _partition_of(good)
    scope = "p" + part.split("-p")[1]
    await _publish(rt, "signing", scope, "base")
    await _publish(rt, "signing", "full", "base")
    for path in (f"signing/{part}.crl", "signing/full.crl"):
        _resp, der = await _fetch(http, path)
        crl_file = tmp_path / (path.replace("/", "_") + ".der")
        crl_file.write_bytes(der)
        res = _openssl("crl", "-inform", "DER", "-in", str(crl_file), "-noout", "-CAfile", ca_pem["signing"])
        assert res.returncode == 0 and "verify OK" in (res.stdout + res.stderr), res.stderr
        pem = _crl_pem(der, tmp_path / "crl.pem")
        bad = _openssl("verify", "-crl_check", "-CAfile", ca_pem["signing"], "-CRLfile", pem,
                       _pem(revoked, tmp_path / "revoked.pem"))
        assert bad.returncode != 0 and "certificate revoked" in (bad.stdout + bad.stderr)
        ok = _openssl("verify", "-crl_check", "-CAfile", ca_pem["signing"], "-CRLfile", pem,
                      _pem(good, tmp_path / "good.pem"))
        assert ok.returncode == 0, ok.stdout + ok.stderr


async def test_openssl_use_deltas(rt, http, terminal, keys, ca_pem, tmp_path):
    late, held, good = [(await _issue(http, terminal, keys, kinds=("auth",)))["auth"] for _ in range(3)]
    await _hold(rt, held)
    part = _partition_of(good)
    scope = "p" + part.split("-p")[1]
    await _publish(rt, "auth", scope, "base")
    await _revoke(rt, late)
    await _release(rt, held)
    await _publish(rt, "auth", scope, "delta")
    base_pem = _crl_pem((await _fetch(http, f"auth/{part}.crl"))[1], tmp_path / "base.pem")
    delta_pem = _crl_pem((await _fetch(http, f"auth/{part}-delta.crl"))[1], tmp_path / "delta.pem")

    def verify(cert, *crl_files, deltas=True):
        args = ["verify", "-crl_check", "-CAfile", ca_pem["auth"]]
        if deltas:
            args.append("-use_deltas")
        for f in crl_files:
            args += ["-CRLfile", f]
        return _openssl(*args, _pem(cert, tmp_path / "c.pem"))

    # the base alone misses the later revocation and still holds the released certificate
    assert verify(late, base_pem, deltas=False).returncode == 0
    assert verify(held, base_pem, deltas=False).returncode != 0
    # with the delta: revoked is revoked, the released hold is good again, good stays good
    res = verify(late, base_pem, delta_pem)
    assert res.returncode != 0 and "certificate revoked" in res.stdout + res.stderr
    assert verify(held, base_pem, delta_pem).returncode == 0, verify(held, base_pem, delta_pem).stdout
    assert verify(good, base_pem, delta_pem).returncode == 0


async def test_many_pages_over_two_connections_give_the_same_crl(rt, http, terminal, keys):

    for _ in range(3):
        await _revoke(rt, (await _issue(http, terminal, keys, kinds=("auth",)))["auth"])
    issuer = rt.issuers.current("auth")
    one = Publisher.from_runtime(rt)
    one.settings = rt.cfg.crl.replace(page_rows=1_000_000, stream_connections=1)
    many = Publisher.from_runtime(rt)
    many.settings = rt.cfg.crl.replace(page_rows=1, stream_connections=2)
    a = (await one.publish(Target(issuer, "full", "base"))).published
    first = [r.serial_number for r in await _crl(http, "auth/full.crl")]
    b = (await many.publish(Target(issuer, "full", "base"))).published
    second = [r.serial_number for r in await _crl(http, "auth/full.crl")]
    assert second == first == sorted(first) and len(first) == a.entries == b.entries >= 3


async def test_scheduler_runs_inside_every_serve_worker(rt):
    """`shomei serve` worker 0 runs the schedule as a background task of the application; here with a
    clock 20 minutes ahead, so every delta is due, and a one-second tick."""
    import dataclasses

    from aiohttp.test_utils import TestServer

    from ca_core.clock import FixedClock
    from shomei.app import make_app

    ahead = FixedClock(rt.clock.now() + dt.timedelta(minutes=20))
    cfg = rt.cfg.replace(crl=rt.cfg.crl.replace(tick_seconds=1))
    worker = dataclasses.replace(rt, cfg=cfg, clock=ahead, worker_index=0)
    issuer = rt.issuers.current("auth")
    server = TestServer(make_app(worker))
    await server.start_server()
    try:
        for _ in range(100):
            async with rt.pool.acquire() as conn:
                last = await crls.latest(conn, issuer.db_id, "full", "delta")
            if last is not None and last.this_update == ahead.now():
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the scheduler did not publish the due delta")
    finally:
        await server.close()
    # in every worker of `shomei serve`, not in applications built for tools and tests
    with_schedule = len(make_app(dataclasses.replace(worker, worker_index=0)).cleanup_ctx)
    assert len(make_app(dataclasses.replace(worker, worker_index=1)).cleanup_ctx) == with_schedule
    # (and the audit checkpoints, also run by every worker only)
    assert len(make_app(dataclasses.replace(worker, worker_index=None)).cleanup_ctx) == with_schedule - 2


def _cli_env(cfg) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOMEI_")}
    env.update({"DATABASE_URL": cfg.database_url, "SHOMEI_PKCS11_MODULE": cfg.hsm.module,
                "SHOMEI_PKCS11_TOKEN": cfg.hsm.token_label, "SHOMEI_PKCS11_PIN_FILE": cfg.hsm.pin_file,
                "SHOMEI_RESIDENT_KEY_FILE": cfg.security.resident_hash_key_file, "SHOMEI_VAR_DIR": cfg.var_dir,
                "SHOMEI_PUBLIC_URL": cfg.server.public_base_url})
    return env


async def test_cli_publish_and_status(rt):
    """`shomei crl publish` in its own process (its own token session), then `shomei crl status`."""
    import sys

    exe = str(Path(sys.executable).with_name("shomei"))
    issuer = rt.issuers.current("auth")
    async with rt.pool.acquire() as conn:
        before = await crls.latest(conn, issuer.db_id, "full", "base")
    proc = await asyncio.create_subprocess_exec(
        exe, "crl", "publish", "--ca", "auth", "--full", "--no-progress", env=_cli_env(rt.cfg),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    gen = issuer.generation
    line = next(l for l in out.decode().splitlines() if l.startswith(f"auth/g{gen}/full.crl:"))
    number = int(line.split("number ")[1].split(",")[0])
    assert before is None or number > before.number
    async with rt.pool.acquire() as conn:
        assert (await crls.latest(conn, issuer.db_id, "full", "base")).number == number
    crl = x509.load_der_x509_crl((output_dir(rt.cfg) / f"auth/g{gen}/full.crl").read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number
    proc = await asyncio.create_subprocess_exec(exe, "crl", "status", env=_cli_env(rt.cfg),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert f"auth/g{gen}/full.crl: number {number}," in out.decode()
