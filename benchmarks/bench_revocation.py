"""Revocation throughput: resident-register feed events per second and online-window applications per
second, beside their baselines, in one run.

    .venv/bin/python -m benchmarks.bench_revocation [--events 100000] [--with-certs 50000]
                                                    [--online 600] [--workers 2]

Feed: one batch of ``--events`` events (``--with-certs`` of them for residents holding both
certificates, whose rows are inserted directly: only the rows matter to the feed), sent as JSON lines to
`shomei serve`; then the same batch again (all duplicates). Baseline: the naive way, one transaction per
event through storage.revocations.apply_revocation, on a sample.
Online: auth certificates issued through the API, then signed validity checks and revocation
applications at several concurrency levels. Baseline: the pure parse-and-verify rate of one core
(ca_core.online, no HTTP, no database), the ceiling of one worker.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
import threading
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from benchmarks.stack import Stack

KINDS = ["moved", "died", "name_changed", "address_notation_changed", "emigrated", "municipal_merger"]


def _code() -> str:
    return f"{secrets.randbelow(10**11):011d}"


async def _synthetic(url: str, key: bytes, n: int) -> list[str]:
    """``n`` residents with a signing and an auth certificate row each; returns their resident codes."""
    import asyncpg

    from ca_core.resident import resident_hash
    from ca_core.serials import new_serial

    conn = await asyncpg.connect(url)
    try:
        gens = {r["ca_id"]: r["id"] for r in await conn.fetch("SELECT id, ca_id FROM ca_generation WHERE is_current")}
        ids = [r["id"] for r in await conn.fetch("SELECT nextval('certificate_id_seq') AS id FROM generate_series(1, $1)",
                                                 2 * n)]
        now = dt.datetime.now(dt.timezone.utc)
        codes, records = [], []
        for i in range(n):
            code = _code()
            codes.append(code)
            h = resident_hash(key, code)
            for j, kind in enumerate(("signing", "auth")):
                cid = ids[2 * i + j]
                records.append((cid, gens[kind], new_serial().to_bytes(16, "big"), kind, h, "131016", cid // 100_000,
                                now - dt.timedelta(days=1), now + dt.timedelta(days=3650), b"\x30\x00"))
        await conn.copy_records_to_table("certificate", records=records, columns=[
            "id", "ca_generation_id", "serial", "kind", "resident_hash", "municipality_code", "partition",
            "not_before", "not_after", "der"])
        return codes
    finally:
        await conn.close()


def _post(url: str, data: bytes, headers: dict, timeout: float = 600, context=None) -> tuple[int, dict]:
    """POST; ``context``: the SSL context (client certificate) of a request to the private listener."""
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class _Peak:
    """Samples the server's resident memory while a block runs."""

    def __init__(self, stack):
        self.stack, self.peak, self._stop = stack, 0.0, threading.Event()

    def __enter__(self):
        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.stack.server_rss_mb())
                time.sleep(0.1)
        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


async def _naive_feed(stack, codes: list[str], key: bytes) -> float:
    """Baseline: one transaction (and several round trips) per event, as a straightforward loop would."""
    import asyncpg

    from ca_core.resident import resident_hash
    from ca_core.revocation import Reason, encode_entry
    from storage import audit, certificates, revocations

    conn = await asyncpg.connect(stack.url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    start = time.perf_counter()
    try:
        for code in codes:
            now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            async with conn.transaction():
                for cert in await certificates.live_of_resident(conn, resident_hash(key, code), ("signing",),
                                                                for_update=True):
                    await revocations.apply_revocation(
                        conn, cert, reason=3, at=now, effective_at=now, source="feed", source_ref=code,
                        entry_der=encode_entry(cert.serial, now, Reason.affiliation_changed))
                    await audit.record(conn, action="revoke", serial=cert.serial.to_bytes(16, "big"))
    finally:
        await conn.close()
    return len(codes) / (time.perf_counter() - start)


def bench_feed(stack, events_n: int, with_certs: int, key: bytes) -> list[tuple]:
    codes = asyncio.run(_synthetic(stack.url, key, with_certs + 2000))
    naive_codes, codes = codes[:2000], codes[2000:]
    # the events occur after the certificates were issued (an event applies only to older ones)
    occurred = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).replace(microsecond=0).isoformat()
    events = [{"event_id": f"bench-{i}", "resident_code": c, "kind": KINDS[i % len(KINDS)],
               "occurred_at": occurred} for i, c in enumerate(codes)]
    events += [{"event_id": f"bench-x-{i}", "resident_code": _code(), "kind": "moved",
                "occurred_at": occurred} for i in range(events_n - len(events))]
    data = ("\n".join(json.dumps(e) for e in events) + "\n").encode()
    url = f"{stack.private_url}/v1/residency-events"
    feed = stack.demo_credential("demo-feed")
    headers = {**feed.headers(), "Content-Type": "application/x-ndjson"}
    context = feed.ssl_context()
    rows = []
    for label in ("first send", "resend (all duplicate)"):
        with _Peak(stack) as peak:
            start = time.perf_counter()
            status, body = _post(url, data, headers, context=context)
            elapsed = time.perf_counter() - start
        assert status == 200, body
        rows.append((f"feed batch, {label}", len(events), elapsed, len(events) / elapsed, peak.peak,
                     json.dumps(body["summary"])))
    naive = asyncio.run(_naive_feed(stack, naive_codes, key))
    rows.append(("feed baseline: one transaction per event", len(naive_codes), len(naive_codes) / naive, naive,
                 0.0, "in-process asyncpg, no HTTP"))
    return rows


def _csr(key) -> str:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "card")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def _issue(stack, n: int, keys) -> list[tuple[bytes, object]]:
    """``n`` auth certificates through the API; returns (DER, key) pairs."""
    url = f"{stack.private_url}/v1/certificates"
    terminal = stack.demo_credential("demo-terminal")
    headers = {**terminal.headers(), "Content-Type": "application/json"}
    context = terminal.ssl_context()
    out = []
    csrs = [_csr(k) for k in keys]
    for i in range(n):
        body = {"request_id": f"rb-{i}-{secrets.token_hex(4)}", "municipality_code": "131016", "resident_code": _code(),
                "resident": {"name": "山田　太郎", "name_substitutes": "00000", "address": "東京都千代田区千代田１番１号",
                             "address_substitutes": "00000000000000", "birth_date": "319800515", "sex": "1"},
                "card_expires_on": "2035-05-15", "auth_csr": csrs[i % len(keys)]}
        status, data = _post(url, json.dumps(body, ensure_ascii=False).encode(), headers, context=context)
        assert status == 201, data
        pem = data["certificates"][0]["certificate"].encode()
        out.append((x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER), keys[i % len(keys)]))
    return out


async def _load(url: str, bodies: list[bytes], concurrency: int, ok: int) -> dict:
    import aiohttp

    latencies, errors, queue = [], 0, iter(bodies)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker():
            nonlocal errors
            for body in queue:
                t = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/pkcs7-mime"}) as r:
                    await r.read()
                    errors += r.status != ok
                latencies.append(time.perf_counter() - t)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"n": len(bodies), "elapsed": elapsed, "errors": errors, "p50": 1000 * latencies[len(latencies) // 2],
            "p99": 1000 * latencies[int(len(latencies) * 0.99)]}


def _verify_rate(app_der: bytes, ca_der: bytes, seconds: float = 2.0) -> float:
    from ca_core import online

    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        app = online.parse_application(app_der, "validity_check")
        online.verify_certificate(app, ca_der)
        online.verify_signature(app)
        n += 1
    return n / (time.perf_counter() - start)


def bench_online(stack, n: int, levels: list[int]) -> list[tuple]:
    from revocation import online_client

    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(16)]
    certs = _issue(stack, n, keys)
    applicant = {"name": "山田　太郎", "address": "東京都千代田区千代田１番１号", "birth_date": "319800515", "sex": "1"}

    def apps(procedure, pairs):
        return [online_client.build(procedure, der, online_client.key_signer(k), applicant) for der, k in pairs]

    base = f"{stack.public_url}/v1/online"  # the online window is public (the resident's signature authenticates)
    rows = []
    per_level = n // len(levels)
    for i, c in enumerate(levels):
        checks = apps("validity_check", certs * max(1, 2000 // n))
        res = asyncio.run(_load(f"{base}/validity-checks", checks, c, 200))
        rows.append((f"online validity checks, concurrency {c}", res["n"], res["elapsed"], res["n"] / res["elapsed"],
                     stack.server_rss_mb(), f"p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms, errors {res['errors']}"))
        revs = apps("revocation", certs[i * per_level:(i + 1) * per_level])
        res = asyncio.run(_load(f"{base}/revocations", revs, c, 202))
        rows.append((f"online revocations, concurrency {c}", res["n"], res["elapsed"], res["n"] / res["elapsed"],
                     stack.server_rss_mb(), f"p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms, errors {res['errors']}"))
    with urllib.request.urlopen(f"{stack.public_url}/ca/auth.crt") as r:
        ca_der = r.read()
    rate = _verify_rate(apps("validity_check", certs[:1])[0], ca_der)
    rows.append(("baseline: parse + verify only, 1 core", 0, 0.0, rate, 0.0, "ca_core.online, no HTTP/DB"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--with-certs", type=int, default=50_000)
    ap.add_argument("--online", type=int, default=600, help="certificates issued for the online benchmark")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with Stack() as stack:
        stack.serve(workers=args.workers)
        key = stack.key_file.read_bytes()
        print(f"feed: {args.events} events, {args.with_certs} residents with certificates ...", flush=True)
        rows = bench_feed(stack, args.events, args.with_certs, key)
        print(f"online: issuing {args.online} auth certificates ...", flush=True)
        rows += bench_online(stack, args.online, [int(c) for c in args.concurrency.split(",")])
    print(f"\n{'measure':44} {'count':>7} {'seconds':>8} {'per s':>9} {'RSS MB':>7}  notes")
    for name, count, secs, rate, rss, notes in rows:
        print(f"{name:44} {count:>7} {secs:>8.2f} {rate:>9.0f} {rss:>7.0f}  {notes}")
    feed_rate = rows[0][3]
    print(f"\nfeed, batch vs one transaction per event: {feed_rate / rows[2][3]:.1f}x")


if __name__ == "__main__":
    main()
