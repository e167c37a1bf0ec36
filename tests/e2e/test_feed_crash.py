"""Crash test of the feed: SIGKILL a real `shomei serve` while it applies a big batch, restart it, resend
the batch: every event is applied exactly once (docs/architecture.md, durable before acknowledged:
nothing acknowledged lost, nothing twice)."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shomei.embedded import free_port
from tests.helpers import resident_code
from tests.integration.revocation_support import synthetic_residents
from tests.tls_clients import Credential

EXE = str(Path(sys.executable).with_name("shomei"))
N = 100_000
WITH_CERTS = 20_000
CHUNK = 5_000


def _start(env: dict, port: int, private_port: int) -> subprocess.Popen:
    """`shomei serve`, ready: the public /healthz answers and the private listener accepts connections."""
    proc = subprocess.Popen([EXE, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                socket.create_connection(("127.0.0.1", private_port), timeout=2).close()
                return proc
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("serve did not become ready")


def _send(private_port: int, feed: Credential, data: bytes) -> tuple[int, dict | None]:
    """POST the batch to the private listener with the feed's client certificate."""
    req = urllib.request.Request(f"https://127.0.0.1:{private_port}/v1/residency-events", data=data,
                                 method="POST", headers={"Content-Type": "application/x-ndjson"})
    try:
        with urllib.request.urlopen(req, timeout=300, context=feed.ssl) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (urllib.error.URLError, ConnectionError, OSError):
        return 0, None  # the server died under us


@pytest.mark.slow
async def test_kill_during_feed_batch_then_resend_applies_each_event_once(rt, stack_env, feed, tmp_path):
    residents = await synthetic_residents(rt, WITH_CERTS)
    tag = secrets.token_hex(4)
    kinds = ["moved", "died", "name_changed", "emigrated", "municipal_merger"]
    # the events occur after the certificates were issued (an event applies only to older ones)
    occurred = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).replace(microsecond=0).isoformat()
    events, expected = [], set()
    for i, (code, serials) in enumerate(residents.items()):
        kind = kinds[i % len(kinds)]
        events.append({"event_id": f"crash-{tag}-{i}", "resident_code": code, "kind": kind,
                       "occurred_at": occurred})
        expected.update([serials["signing"]] if kind in ("moved", "name_changed") else
                        serials.values() if kind in ("died", "emigrated") else [])
    events += [{"event_id": f"crash-{tag}-{WITH_CERTS + i}", "resident_code": resident_code(), "kind": "moved",
                "occurred_at": occurred} for i in range(N - WITH_CERTS)]
    # Interleave the residents with certificates through the whole batch.
    rng = __import__("random").Random(7)
    rng.shuffle(events)
    data = "\n".join(json.dumps(e) for e in events).encode()

    config = tmp_path / "shomei.toml"
    config.write_text(f"[revocation]\nfeed_chunk_events = {CHUNK}\n")
    port, private_port = free_port(), free_port()
    env = {**stack_env, "SHOMEI_LISTEN": f"127.0.0.1:{port}", "SHOMEI_PRIVATE_LISTEN": f"127.0.0.1:{private_port}",
           "SHOMEI_CONFIG": str(config), "SHOMEI_VAR_DIR": str(tmp_path / "var")}
    env.pop("SHOMEI_DEMO_CLIENTS", None)

    async def applied_so_far() -> int:
        async with rt.pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM feed_event WHERE event_id LIKE $1", f"crash-{tag}-%")

    proc = _start(env, port, private_port)
    try:
        sending = asyncio.create_task(asyncio.to_thread(_send, private_port, feed, data))
        deadline = time.time() + 120
        while await applied_so_far() == 0:
            assert time.time() < deadline and not sending.done(), "the batch never started to apply"
            await asyncio.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        status, _ = await sending
        assert status == 0, "the answer of the killed batch must not have arrived"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Give PostgreSQL a moment to notice the dead connection and roll its transaction back.
    await asyncio.sleep(1)
    partial = await applied_so_far()
    assert 0 < partial < N, partial
    assert partial % CHUNK == 0, "a chunk is applied wholly or not at all"

    proc = _start(env, port, private_port)
    try:
        status, body = await asyncio.to_thread(_send, private_port, feed, data)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert status == 200, body
    summary = body["summary"]
    assert summary["duplicate"] == partial and summary["rejected"] == 0
    assert summary["applied"] + summary["no_certificate"] == N - partial
    # Every event exactly once: one feed_event row each, one revocation per expected certificate.
    all_serials = [s.to_bytes(16, "big") for serials in residents.values() for s in serials.values()]
    async with rt.pool.acquire() as conn:
        assert await applied_so_far() == N
        rows = await conn.fetch("SELECT serial, count(*) AS n FROM revocation WHERE serial = ANY($1::bytea[])"
                                " GROUP BY serial", all_serials)
        revoked = await conn.fetch("SELECT serial FROM certificate WHERE serial = ANY($1::bytea[])"
                                   " AND status = 'revoked'", all_serials)
        outcomes = await conn.fetch("SELECT outcome, count(*) AS n FROM feed_event WHERE event_id LIKE $1"
                                    " GROUP BY outcome", f"crash-{tag}-%")
    assert {int.from_bytes(r["serial"], "big") for r in rows} == expected
    assert all(r["n"] == 1 for r in rows)
    assert {int.from_bytes(r["serial"], "big") for r in revoked} == expected
    by = {r["outcome"]: r["n"] for r in outcomes}
    assert by["applied"] == WITH_CERTS and by["no_certificate"] == N - WITH_CERTS
