"""Crash campaigns: real traffic (issuance, window revocations, holds, feed batches, online
applications, CRL publication) against `shomei serve --workers 2`, a SIGKILL of the whole service or of
one worker at a random moment, a restart, and then the promises checked from the database and over
HTTP:

- every acknowledged write is present exactly once; no certificate exists that was never sent;
- CRL numbers strictly increase per scope;
- every complete CRL served during the trial verifies and lists every revocation in force at its
  thisUpdate (of a certificate not expired then);
- OCSP agrees with the database.

The terminal (issuance, revocations, holds) and the feed call the private listener (HTTPS, each with a
client certificate of the operations CA issued for this test); online applications, CRLs, CA
certificates and OCSP are on the public one.

`make test` runs a few trials (SHOMEI_CRASH_TRIALS, default 3); `make soak` runs 100 and prints the
table of trials and findings.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from revocation import online_client
from shomei.embedded import free_port
from tests.helpers import KeyPool, csr_pem, resident
from tests.ocsp_helpers import get_path, request_der
from tests.tls_clients import Credential, make_credential

EXE = str(Path(sys.executable).with_name("shomei"))
TRIALS = int(os.environ.get("SHOMEI_CRASH_TRIALS", "3"))
APPLICANT = {"name": "山田　花子", "address": "東京都千代田区千代田１番１号", "birth_date": "319850412", "sex": "2"}


@dataclass
class Ledger:
    """What the clients sent and what the service acknowledged, in one trial."""

    tag: str = ""
    sent_issuances: set = field(default_factory=set)
    acked_issuances: dict = field(default_factory=dict)  # request_id -> {serial: (kind, key index)}
    acked_revocations: dict = field(default_factory=dict)  # request_id -> [serials]
    acked_holds: dict = field(default_factory=dict)
    acked_events: set = field(default_factory=set)
    acked_online: dict = field(default_factory=dict)  # nonce ref -> serial
    served_crls: list = field(default_factory=list)  # DER of complete CRLs fetched during the trial
    certs: dict = field(default_factory=dict)  # serial -> (x509 cert, kind, key index, resident)

    @property
    def writes(self) -> int:
        return (len(self.acked_issuances) + len(self.acked_revocations) + len(self.acked_holds)
                + len(self.acked_events) + len(self.acked_online))


class Traffic:
    def __init__(self, port: int, private_port: int, terminal: Credential, feed: Credential, keys: list,
                 csrs: list, tag: str):
        self.base = f"http://127.0.0.1:{port}"
        self.private = f"https://127.0.0.1:{private_port}"
        self.terminal, self.feed, self.keys, self.csrs, self.tag = terminal, feed, keys, csrs, tag
        self.ledger = Ledger(tag=tag)
        self.rng = random.Random(tag)
        self.n = 0

    def _rid(self, what: str) -> str:
        self.n += 1
        return f"crash-{self.tag}-{what}-{self.n}"

    def _hdr(self) -> dict:
        return self.terminal.auth()["headers"]  # X-Operator-Id of the terminal's registered operator

    async def issue(self, http) -> None:
        i = self.rng.randrange(len(self.keys))
        j = (i + 1 + self.rng.randrange(len(self.keys) - 1)) % len(self.keys)
        rid = self._rid("issue")
        code = "".join(self.rng.choice("0123456789") for _ in range(11))
        body = {"request_id": rid, "municipality_code": "131016", "resident_code": code, "resident": resident(),
                "card_expires_on": "2034-01-01", "signing_csr": self.csrs[i], "auth_csr": self.csrs[j]}
        self.ledger.sent_issuances.add(rid)
        async with http.post("/v1/certificates", json=body, headers=self._hdr()) as resp:
            if resp.status != 201:
                return
            data = await resp.json()
        got = {}
        for item in data["certificates"]:
            cert = x509.load_pem_x509_certificate(item["certificate"].encode())
            key = i if item["kind"] == "signing" else j
            got[cert.serial_number] = (item["kind"], key)
            self.ledger.certs[cert.serial_number] = (cert, item["kind"], key, code)
        self.ledger.acked_issuances[rid] = got

    def _pick(self, kind: str | None = None):
        pool = [s for s, c in self.ledger.certs.items() if kind is None or c[1] == kind]
        return self.rng.choice(pool) if pool else None

    async def revoke(self, http) -> None:
        serial = self._pick()
        if serial is None:
            return
        rid = self._rid("revoke")
        async with http.post("/v1/revocations", json={"request_id": rid, "serial": format(serial, "x"),
                                                      "reason": "holder_request"}, headers=self._hdr()) as resp:
            if resp.status == 201:
                self.ledger.acked_revocations[rid] = [int(r["serial"], 16) for r in (await resp.json())["revoked"]]

    async def hold(self, http) -> None:
        serial = self._pick("auth")
        if serial is None:
            return
        rid = self._rid("hold")
        async with http.post("/v1/holds", json={"request_id": rid, "serial": format(serial, "x")},
                             headers=self._hdr()) as resp:
            if resp.status == 201:
                self.ledger.acked_holds[rid] = [int(r["serial"], 16) for r in (await resp.json())["held"]]

    async def feed_batch(self, http) -> None:
        residents = [c[3] for c in self.ledger.certs.values()]
        occurred = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        events = [{"event_id": self._rid("event"),
                   "resident_code": self.rng.choice(residents) if residents and self.rng.random() < 0.5
                   else "".join(self.rng.choice("0123456789") for _ in range(11)),
                   "kind": self.rng.choice(["moved", "died", "municipal_merger"]), "occurred_at": occurred}
                  for _ in range(20)]
        async with http.post("/v1/residency-events", json={"events": events}) as resp:
            if resp.status == 200:
                self.ledger.acked_events.update(e["event_id"] for e in events)

    async def online(self, http) -> None:
        serial = self._pick()
        if serial is None:
            return
        cert, _kind, key, _code = self.ledger.certs[serial]
        nonce = secrets.token_bytes(16)
        der = online_client.build("revocation", cert.public_bytes(serialization.Encoding.DER),
                                  online_client.key_signer(self.keys[key]), APPLICANT, nonce=nonce)
        async with http.post("/v1/online/revocations", data=der,
                             headers={"Content-Type": online_client.CONTENT_TYPE}) as resp:
            if resp.status == 202:
                self.ledger.acked_online["online:" + nonce.hex()] = serial

    async def fetch_crl(self, http) -> None:
        async with http.get("/crl/auth/full.crl") as resp:
            if resp.status == 200:
                self.ledger.served_crls.append(await resp.read())

    async def run(self, until: float) -> None:
        async def loop(action, pause, credential: Credential | None = None):
            """``action`` again and again; on the private listener as ``credential`` if given."""
            base = self.private if credential else self.base
            connector = aiohttp.TCPConnector(ssl=credential.ssl) if credential else None
            async with aiohttp.ClientSession(base, connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=10)) as http:
                while time.monotonic() < until:
                    try:
                        await action(http)
                    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                        await asyncio.sleep(0.05)  # the service is gone: what was in flight is unacknowledged
                    await asyncio.sleep(pause)

        t, f = self.terminal, self.feed
        await asyncio.gather(loop(self.issue, 0, t), loop(self.issue, 0, t), loop(self.revoke, 0.02, t),
                             loop(self.hold, 0.05, t), loop(self.feed_batch, 0.1, f), loop(self.online, 0.05),
                             loop(self.fetch_crl, 0.2))


async def _workers_live(private_port: int, credential: Credential) -> int | None:
    """Live workers, from the detailed /healthz of the private listener (None: no answer)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{private_port}/healthz", ssl=credential.ssl) as resp:
            body = await resp.json()
            return body["checks"].get("workers", {}).get("live") if resp.status == 200 else None


async def _start(env: dict, port: int, private_port: int, credential: Credential) -> subprocess.Popen:
    proc = subprocess.Popen([EXE, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200 and await _workers_live(private_port, credential) == 2:
                        return proc
            except (aiohttp.ClientError, ValueError, OSError):
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("serve did not become ready")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired, ChildProcessError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _workers(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in cmd:
                out.append(int(entry.name))
    return out


async def _findings(rt, ledger: Ledger, port: int, ca_der: bytes) -> list[str]:
    found = []
    ca = x509.load_der_x509_certificate(ca_der)
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT i.request_id, c.serial FROM issuance i JOIN certificate c ON c.issuance_id = i.id"
                                " WHERE i.request_id LIKE $1", f"crash-{ledger.tag}-issue-%")
        in_db: dict[str, set] = {}
        for r in rows:
            in_db.setdefault(r["request_id"], set()).add(int.from_bytes(r["serial"], "big"))
        for rid, certs in ledger.acked_issuances.items():
            if in_db.get(rid) != set(certs):
                found.append(f"acknowledged issuance {rid} not stored exactly once")
        for rid in set(in_db) - ledger.sent_issuances:
            found.append(f"certificate of a request never sent: {rid}")
        for what, acked in (("revocation", ledger.acked_revocations), ("hold", ledger.acked_holds)):
            for rid, serials in acked.items():
                n = await conn.fetchval("SELECT count(*) FROM revocation WHERE source_ref = $1", rid)
                if n != len(serials):
                    found.append(f"acknowledged {what} {rid}: {n} rows for {len(serials)} certificates")
        if ledger.acked_events:
            n = await conn.fetchval("SELECT count(*) FROM feed_event WHERE event_id = ANY($1::text[])",
                                    list(ledger.acked_events))
            if n != len(ledger.acked_events):
                found.append(f"acknowledged feed events: {n} stored of {len(ledger.acked_events)}")
        for ref, serial in ledger.acked_online.items():
            n = await conn.fetchval("SELECT count(*) FROM revocation WHERE source_ref = $1 AND serial = $2", ref,
                                    serial.to_bytes(16, "big"))
            if n != 1:
                found.append(f"acknowledged online revocation {ref}: {n} rows")
        numbers = await conn.fetch("SELECT ca_generation_id, scope, array_agg(crl_number ORDER BY id) AS n"
                                   " FROM crl GROUP BY 1, 2")
        for r in numbers:
            seq = [int(x) for x in r["n"]]
            if any(b <= a for a, b in zip(seq, seq[1:])):
                found.append(f"CRL numbers of scope {r['scope']} not strictly increasing: {seq[-5:]}")
        gen = await conn.fetchval("SELECT id FROM ca_generation WHERE ca_id = 'auth' AND is_current")
        for der in ledger.served_crls:
            crl = x509.load_der_x509_crl(der)
            if not crl.is_signature_valid(ca.public_key()):
                found.append(f"CRL {crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number} "
                             "does not verify")
                continue
            at = crl.last_update_utc
            must = await conn.fetch(
                "SELECT serial FROM revocation WHERE ca_generation_id = $1"
                " AND effective_at IS NOT NULL AND effective_at < $2 AND cert_not_after >= $2"
                " AND (released_at IS NULL OR released_at >= $2)", gen, at)
            listed = {r.serial_number for r in crl}
            missing = [int.from_bytes(r["serial"], "big") for r in must
                       if int.from_bytes(r["serial"], "big") not in listed]
            if missing:
                found.append(f"CRL of {at:%H:%M:%S} misses {len(missing)} revocation(s) in force before it")
        sample = list(ledger.certs.items())[:15]

    async def db_statuses() -> dict:
        async with rt.pool.acquire() as conn:
            return {int.from_bytes(r["serial"], "big"): r["status"] for r in await conn.fetch(
                "SELECT serial, status FROM certificate WHERE serial = ANY($1::bytea[])",
                [s.to_bytes(16, "big") for s, _ in sample])}

    def want(status):
        return {"valid": ocsp.OCSPCertStatus.GOOD}.get(status, ocsp.OCSPCertStatus.REVOKED)

    # The service runs on meanwhile: its CRL schedule makes accepted online revocations effective (at the
    # first CRL issuance after a restart, typically), so a status may change between the database read and
    # the OCSP answer. Statuses only move forward here (valid, held, revoked), so OCSP agrees with the
    # database if its answer is the status read just before or just after it.
    before = await db_statuses()
    issuers, answers = {}, {}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        for kind in ("signing", "auth"):
            async with http.get(f"/ca/{kind}.crt") as resp:
                issuers[kind] = x509.load_der_x509_certificate(await resp.read())
        for serial, (cert, kind, _k, _c) in sample:
            async with http.get(get_path(request_der(cert, issuers[kind]))) as resp:
                answers[serial] = ocsp.load_der_ocsp_response(await resp.read()).certificate_status
    after = await db_statuses()
    for serial, answer in answers.items():
        if answer not in (want(before.get(serial)), want(after.get(serial))):
            found.append(f"OCSP says {answer.name} for a certificate {before.get(serial)} before and "
                         f"{after.get(serial)} after ({serial:032x})")
    return found


@pytest.mark.slow
async def test_crash_campaign(rt, tls, stack_env, tmp_path):
    pool = KeyPool()
    keys = [pool.new() for _ in range(6)]
    csrs = [csr_pem(k) for k in keys]
    terminal = await make_credential(rt, tmp_path / "clients", kind="terminal", name=f"crash-{secrets.token_hex(4)}",
                                     municipality_code="131016", operators=("clerk-crash",))
    feed = await make_credential(rt, tmp_path / "clients", kind="feed", name=f"crash-feed-{secrets.token_hex(4)}")
    config = tmp_path / "shomei.toml"
    config.write_text("[crl]\ntick_seconds = 1\nfull_interval_minutes = 1\nfull_validity_minutes = 10\n"
                      "delta_interval_minutes = 1\ndelta_validity_minutes = 10\n")
    port, private_port = free_port(), free_port()
    env = {**stack_env, "SHOMEI_LISTEN": f"127.0.0.1:{port}", "SHOMEI_PRIVATE_LISTEN": f"127.0.0.1:{private_port}",
           "SHOMEI_CONFIG": str(config), "SHOMEI_VAR_DIR": str(tmp_path / "var"), "SHOMEI_WORKERS": "2"}
    ca_der = rt.issuers.current("auth").certificate_der
    rng = random.Random(os.environ.get("SHOMEI_CRASH_SEED", "crash"))
    table = []
    proc = await _start(env, port, private_port, terminal)
    try:
        for trial in range(1, TRIALS + 1):
            tag = f"{secrets.token_hex(3)}{trial}"
            traffic = Traffic(port, private_port, terminal, feed, keys, csrs, tag)
            whole = rng.random() < 0.5
            kill_after = rng.uniform(0.3, 2.5)
            running = asyncio.create_task(traffic.run(time.monotonic() + kill_after + 0.5))
            await asyncio.sleep(kill_after)
            if whole:
                os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
            else:
                os.kill(rng.choice(_workers(proc.pid)), signal.SIGKILL)
            await running
            if whole:
                proc = await _start(env, port, private_port, terminal)
            else:
                for _ in range(150):  # the supervisor replaces the worker
                    if await _workers_live(private_port, terminal) == 2:
                        break
                    await asyncio.sleep(0.2)
            findings = await _findings(rt, traffic.ledger, port, ca_der)
            table.append((trial, "service" if whole else "worker", f"{kill_after:.2f}", traffic.ledger.writes,
                          len(traffic.ledger.served_crls), findings))
    finally:
        _stop(proc)
    lines = ["trial  killed   after s  acknowledged writes  CRLs checked  findings"]
    lines += [f"{t:5d}  {k:7s}  {a:>7s}  {w:19d}  {c:12d}  {len(f)}" for t, k, a, w, c, f in table]
    lines.append(f"total: {len(table)} trials, {sum(r[3] for r in table)} acknowledged writes, "
                 f"{sum(len(r[5]) for r in table)} findings")
    report = "\n".join(lines)
    print("\n" + report)
    (Path(os.environ.get("SHOMEI_CRASH_REPORT", tmp_path / "crash-report.txt"))).write_text(report + "\n")
    problems = [f"trial {t}: {f}" for t, _k, _a, _w, _c, fs in table for f in fs]
    assert problems == [], "\n".join(problems[:20])
    assert sum(r[3] for r in table) > 0, "no write was acknowledged: the traffic did not run"
