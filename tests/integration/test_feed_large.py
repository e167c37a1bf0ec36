"""A batch of 100,000 feed events in one request (docs/architecture.md, facts: millions of moves a year)."""
from __future__ import annotations

import datetime as dt
import json
import secrets
import time

from cryptography.x509 import ocsp

from tests.helpers import resident_code
from tests.ocsp_helpers import get_path, raw_request

N = 100_000


async def _codes_without_certificates(rt, n: int) -> list[str]:
    """``n`` distinct resident codes of nobody holding a certificate in the shared test database."""
    from ca_core.resident import resident_hash

    codes: set[str] = set()
    while len(codes) < n:
        fresh = {resident_code() for _ in range(n - len(codes))} - codes
        async with rt.pool.acquire() as conn:
            taken = {bytes(r["resident_hash"]) for r in await conn.fetch(
                "SELECT resident_hash FROM certificate WHERE resident_hash = ANY($1::bytea[])",
                [resident_hash(rt.resident_key, c) for c in fresh])}
        codes |= {c for c in fresh if resident_hash(rt.resident_key, c) not in taken}
    return sorted(codes)
WITH_CERTS = 5_000


async def test_hundred_thousand_events_in_one_batch(http, feed, rt):
    from tests.integration.revocation_support import synthetic_residents

    residents = await synthetic_residents(rt, WITH_CERTS)
    kinds = ["moved", "died", "address_notation_changed", "municipal_merger", "emigrated"]
    # the events occur after the certificates were issued (an event applies only to older ones)
    occurred = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).replace(microsecond=0).isoformat()
    events, expected_revoked = [], set()
    for i, (code, serials) in enumerate(residents.items()):
        kind = kinds[i % len(kinds)]
        events.append({"event_id": f"big-{secrets.token_hex(6)}-{i}", "resident_code": code, "kind": kind,
                       "occurred_at": occurred})
        if kind in ("moved", "address_notation_changed"):
            expected_revoked.add(serials["signing"])
        elif kind in ("died", "emigrated"):
            expected_revoked.update(serials.values())
    for i, code in enumerate(await _codes_without_certificates(rt, N - WITH_CERTS)):
        events.append({"event_id": f"big-n-{secrets.token_hex(6)}-{i}", "resident_code": code,
                       "kind": "moved", "occurred_at": occurred})
    # An OCSP answer cached before the batch must not outlive it (the bulk change notifies '*').
    watched = next(iter(residents.values()))["signing"]  # the first resident moved: signing revoked
    assert watched in expected_revoked
    issuer = rt.issuers.current("signing")
    probe = get_path(raw_request([{"hash_algorithm": {"algorithm": "sha1"}, "issuer_name_hash": issuer.name_hash_sha1,
                                   "issuer_key_hash": issuer.key_hash_sha1, "serial_number": watched}]))
    for _ in range(2):
        answer = ocsp.load_der_ocsp_response(await (await http.get(probe)).read())
        assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    data = json.dumps({"events": events}).encode()
    started = time.perf_counter()
    resp = await http.post("/v1/residency-events", data=data, ssl=feed.ssl,
                           headers={"Content-Type": "application/json"})
    body = await resp.json()
    elapsed = time.perf_counter() - started
    assert resp.status == 200, body
    print(f"\n100,000 feed events applied in {elapsed:.1f} s ({len(data) / 1e6:.1f} MB)")
    assert len(body["results"]) == N
    assert body["summary"] == {"applied": WITH_CERTS, "duplicate": 0, "no_certificate": N - WITH_CERTS,
                               "issued_after_event": 0, "rejected": 0}
    all_serials = [s.to_bytes(16, "big") for serials in residents.values() for s in serials.values()]
    async with rt.pool.acquire() as conn:
        revoked = await conn.fetch("SELECT serial FROM certificate WHERE serial = ANY($1::bytea[]) AND status = 'revoked'",
                                   all_serials)
        rows = await conn.fetchval("SELECT count(*) FROM revocation WHERE serial = ANY($1::bytea[])", all_serials)
    assert {int.from_bytes(r["serial"], "big") for r in revoked} == expected_revoked
    assert rows == len(expected_revoked)
    answer = ocsp.load_der_ocsp_response(await (await http.get(probe)).read())
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
