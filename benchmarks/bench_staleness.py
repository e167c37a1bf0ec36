"""Stale OCSP answers after an acknowledged revocation, with and without the status sync, in one run.

    .venv/bin/python -m benchmarks.bench_staleness [--rounds 10000] [--seconds 4] [--concurrency 64]

`shomei serve --workers 2` runs twice on the same private stack (PostgreSQL, SoftHSM): once with
`[server] status_sync_ms = 0` (the old behaviour: a revocation is answered as soon as it commits) and
once with the default (2000: the answer waits until every process's status listener has applied it).

Two keep-alive connections to the private listener (HTTPS, the demo terminal's client certificate) are
kept: A on worker 0 and B on worker 1 (the private listener's detailed GET /healthz names the worker a
connection landed on). Each auth certificate's OCSP answer is first put into worker 1's memory cache (two
GETs on B, in chunks just before their rounds). Each round revokes one certificate on A
(POST /v1/revocations) and, the moment the 201 is read, asks its OCSP answer on B, again and again while
it says "good": the window is the time from the revocation's answer to the first "revoked" answer (0 when
the first answer already says revoked), and a round with any "good" after the acknowledgement is stale.

Also per mode: revocation latency (POST sent to answer read, one at a time), and the rate of cached OCSP
GETs (wrk, keep-alive, on answers warmed in both workers), which the fix must not lower. Each mode has a
private stack of its own (benchmarks/stack.py) and both serve at once, so that the wrk runs alternate
between the modes and other load on the machine weighs on both alike.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import shutil
import statistics
import time

from cryptography import x509
from cryptography.x509 import ocsp

from benchmarks.bench_issuance import _csr, _keys
from benchmarks.bench_ocsp import GET_LUA, wrk
from benchmarks.stack import Stack
from tests.ocsp_helpers import get_path, request_der

HOST = "127.0.0.1"
GOOD, REVOKED = ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED
CHUNK = 1000  # certificates warmed on B just before their rounds (answers stay well within refresh_seconds)
WINDOW_LIMIT = 10.0  # seconds of "good" after the acknowledgement before a round is given up as broken


# -- preparation -----------------------------------------------------------------------------------

async def issue(stack: Stack, csrs: list[str], n: int, tag: str,
                concurrency: int = 16) -> list[tuple[str, str]]:
    """``n`` auth certificates over HTTPS as the demo terminal (auth_csr only); returns (hex serial,
    OCSP GET path) of each."""
    import aiohttp

    base = stack.private_url
    terminal = stack.demo_credential("demo-terminal")
    headers = {**terminal.headers(), "Content-Type": "application/json"}
    first_code = secrets.randbelow(10**11 - n)
    out: list[tuple[str, str] | None] = [None] * n
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=terminal.ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{base}/ca/auth.crt") as r:
            issuer = x509.load_der_x509_certificate(await r.read())

        async def worker():
            for i in todo:
                body = {"request_id": f"stale-{tag}-{i}", "municipality_code": "131016",
                        "resident_code": f"{first_code + i:011d}",
                        "resident": {"name": "山田　太郎", "name_substitutes": "00000",
                                     "address": "東京都千代田区千代田１番１号",
                                     "address_substitutes": "00000000000000",
                                     "birth_date": "319800515", "sex": "1"},
                        "card_expires_on": "2035-05-15", "auth_csr": csrs[i % len(csrs)]}
                payload = json.dumps(body, ensure_ascii=False).encode()
                async with session.post(f"{base}/v1/certificates", data=payload, headers=headers) as r:
                    data = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"issuance answered {r.status}: {data}")
                c = data["certificates"][0]
                cert = x509.load_pem_x509_certificate(c["certificate"].encode())
                out[i] = (c["serial"], get_path(request_der(cert, issuer)))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out  # type: ignore[return-value]


# -- keep-alive connections pinned to a worker -------------------------------------------------------

class Conn:
    """One keep-alive HTTPS connection to the private listener (the demo terminal's certificate) that never
    reconnects behind our back (it would land on any worker): a closed connection raises instead."""

    def __init__(self, stack: Stack):
        self.http = http.client.HTTPSConnection(HOST, stack.private_port, timeout=30,
                                                context=stack.ssl_context("demo-terminal"))
        self.http.connect()
        self.http.auto_open = 0
        status, body = self.request("GET", "/healthz")
        health = json.loads(body)
        if status != 200 or health["checks"].get("status_listener") != "ok":
            raise RuntimeError(f"worker not ready: {health}")
        self.worker = health["worker"]

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        self.http.request(method, path, body=body, headers=headers or {})
        resp = self.http.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.http.close()


def pinned_pair(stack: Stack, attempts: int = 64) -> tuple[Conn, Conn]:
    """Connection A on worker 0 and B on worker 1: open connections until both are found."""
    found: dict[int, Conn] = {}
    for _ in range(attempts):
        conn = Conn(stack)
        if conn.worker in (0, 1) and conn.worker not in found:
            found[conn.worker] = conn
            if len(found) == 2:
                return found[0], found[1]
        else:
            conn.close()
    raise RuntimeError(f"connections reached only worker(s) {sorted(found)} in {attempts} attempts")


def ocsp_status(body: bytes):
    resp = ocsp.load_der_ocsp_response(body)
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise RuntimeError(f"OCSP answered {resp.response_status}")
    return resp.certificate_status


def warm(conn: Conn, paths) -> None:
    """Two GETs of each answer on ``conn``: the first signs it, the second is served from memory."""
    for path in paths:
        for _ in range(2):
            status, body = conn.request("GET", path)
            if status != 200 or ocsp_status(body) != GOOD:
                raise RuntimeError(f"warming {path}: HTTP {status}, not a good answer")


# -- the rounds ----------------------------------------------------------------------------------------

def rounds(stack: Stack, certs: list[tuple[str, str]], tag: str) -> dict:
    """Revoke on A, then ask on B until "revoked"; per round: revocation latency, window, stale or not."""
    headers = {**stack.demo_credential("demo-terminal").headers(), "Content-Type": "application/json"}
    latencies, windows, stale, extra_gets, reconnects = [], [], 0, 0, 0
    a, b = pinned_pair(stack)
    try:
        for start in range(0, len(certs), CHUNK):
            chunk = certs[start:start + CHUNK]
            try:
                warm(b, (path for _serial, path in chunk))
                a.request("GET", "/healthz")  # A was idle while B warmed: make sure it is still there
            except (http.client.HTTPException, OSError):
                a.close(), b.close()  # closed by the server: pin a new pair and warm again
                a, b = pinned_pair(stack)
                reconnects += 1
                warm(b, (path for _serial, path in chunk))
            for i, (serial, path) in enumerate(chunk):
                body = json.dumps({"request_id": f"stale-{tag}-{start + i}", "serial": serial,
                                   "reason": "holder_request"}).encode()
                t0 = time.perf_counter()
                status, answer = a.request("POST", "/v1/revocations", body, headers)
                acked = time.perf_counter()
                if status != 201:
                    raise RuntimeError(f"revocation of {serial} answered {status}: {answer[:300]!r}")
                goods = 0
                while True:
                    status, der = b.request("GET", path)
                    seen = time.perf_counter()
                    if status != 200:
                        raise RuntimeError(f"OCSP GET answered HTTP {status}")
                    cert_status = ocsp_status(der)
                    if cert_status == REVOKED:
                        break
                    if cert_status != GOOD:
                        raise RuntimeError(f"OCSP said {cert_status} for {serial}")
                    goods += 1
                    if seen - acked > WINDOW_LIMIT:
                        raise RuntimeError(f"{serial} still good {WINDOW_LIMIT} s after its revocation was answered")
                latencies.append(acked - t0)
                windows.append(seen - acked if goods else 0.0)
                stale += goods > 0
                extra_gets += goods
    finally:
        a.close()
        b.close()
    return {"latencies": latencies, "windows": windows, "stale": stale, "extra_gets": extra_gets,
            "reconnects": reconnects}


# -- the cached rate -------------------------------------------------------------------------------------

def warm_both(stack: Stack, paths: list[str]) -> None:
    """The cached set's answers into both workers' memory."""
    a, b = pinned_pair(stack)
    try:
        warm(a, paths)
        warm(b, paths)
    finally:
        a.close()
        b.close()


# -- the run ---------------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


MODES = (("wait off", 0, "status_sync_ms = 0 (before the fix)"),
         ("wait on", None, "status_sync_ms = 2000 (default)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10000, help="revocations per mode (default 10000)")
    ap.add_argument("--seconds", type=int, default=3, help="length of each wrk run of cached GETs")
    ap.add_argument("--runs", type=int, default=5, help="wrk runs per mode, alternating (the median is reported)")
    ap.add_argument("--concurrency", type=int, default=64, help="wrk connections")
    ap.add_argument("--cached-set", type=int, default=1000, help="certificates asked in the cached-rate runs")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    t_all = time.perf_counter()
    print("generating 16 RSA-2048 card keys ...", flush=True)
    csrs = [_csr(k) for k in _keys(16)]
    results: dict[str, dict] = {}
    # One private stack per mode, both serving at once, so that the cached-rate runs can alternate
    # between them: other load on the machine then weighs on both modes alike.
    toml = {name: "[server]\n" + (f"status_sync_ms = {sync_ms}\n" if sync_ms is not None else "")
            for name, sync_ms, _label in MODES}
    with Stack(toml=toml["wait off"]) as off_stack, Stack(toml=toml["wait on"]) as on_stack:
        stacks = {"wait off": off_stack, "wait on": on_stack}
        for name, _sync_ms, _label in MODES:
            stack = stacks[name]
            t = time.perf_counter()
            stack.serve(workers=2)
            print(f"[{name}] `shomei serve --workers 2` ready in {time.perf_counter() - t:.1f} s", flush=True)
        try:
            for name, _sync, _label in MODES:
                stack = stacks[name]
                tag = f"{name.replace(' ', '-')}-{secrets.token_hex(3)}"
                t = time.perf_counter()
                certs = asyncio.run(issue(stack, csrs, args.rounds + args.cached_set, tag))
                issued = time.perf_counter() - t
                print(f"[{name}] issued {len(certs)} auth certificates in {issued:.1f} s", flush=True)
                t = time.perf_counter()
                res = rounds(stack, certs[:args.rounds], tag)
                res.update(issue_s=issued, rounds_s=time.perf_counter() - t, rates=[], p99s=[], problems=[],
                           cached=[path for _serial, path in certs[args.rounds:]])
                print(f"[{name}] {args.rounds} rounds (warming included) in {res['rounds_s']:.1f} s: "
                      f"{res['stale']} stale", flush=True)
                results[name] = res
            for name, _sync, _label in MODES:
                stack, res = stacks[name], results[name]
                (stack.dir / "get.txt").write_text("".join(p + "\n" for p in res["cached"]))
                (stack.dir / "get.lua").write_text(GET_LUA % {"file": stack.dir / "get.txt"})
                warm_both(stack, res["cached"])
            for run in range(args.runs):
                for name, _sync, _label in (MODES if run % 2 == 0 else MODES[::-1]):  # neither always first
                    stack, res = stacks[name], results[name]
                    r = wrk(f"http://{HOST}:{stack.port}", stack.dir / "get.lua", args.concurrency, args.seconds)
                    res["rates"].append(r["rate"])
                    res["p99s"].append(r["p99"])
                    if r["non2xx"] or r["errors"]:
                        res["problems"].append(f"non-2xx {r['non2xx']} {r['errors']}".strip())
            for name, _sync, _label in MODES:
                res = results[name]
                res["rate"] = statistics.median(res["rates"])
                print(f"[{name}] cached GET runs: {', '.join(f'{x:.0f}' for x in res['rates'])} answers/s", flush=True)
        finally:
            for stack in stacks.values():
                stack.stop_server()
    total = time.perf_counter() - t_all

    print(f"\nStale OCSP answers after an acknowledged revocation: `shomei serve --workers 2`, {os.cpu_count()} cores,"
          f" {args.rounds} rounds per mode;\nrevocation on worker 0 (connection A), then OCSP GET on worker 1 "
          f"(connection B) of an answer warmed into its memory cache.\n")
    print(f"{'mode':36} {'rounds':>6} {'stale':>6} {'stale %':>8} {'max ms':>7} {'p99 ms':>7} "
          f"{'revoke p50':>10} {'revoke p99':>10} {'cached GET/s':>12}")
    for name, _sync, label in MODES:
        r = results[name]
        w = [1000 * x for x in r["windows"]]
        lat = [1000 * x for x in r["latencies"]]
        print(f"{label:36} {len(w):>6} {r['stale']:>6} {100 * r['stale'] / max(1, len(w)):>7.2f}% "
              f"{max(w, default=0):>7.2f} {pct(w, 0.99):>7.2f} {pct(lat, 0.50):>10.2f} {pct(lat, 0.99):>10.2f} "
              f"{r['rate']:>12.0f}")
    print(f"\nstale: rounds with at least one 'good' answer after the revocation's 201 was read; max, p99: the"
          f" window from that 201\nto the first 'revoked' answer, over all rounds (0 when the first answer said"
          f" revoked); revoke: POST /v1/revocations\nlatency, one at a time, ms; cached GET/s: wrk -t2"
          f" -c{args.concurrency} on {args.cached_set} answers warmed in both workers, median of {args.runs} runs"
          f" of {args.seconds} s,\nalternating between the modes (both servers up, each on its own PostgreSQL and"
          f" token).\n")
    for name, _sync, label in MODES:
        r = results[name]
        stale_w = sorted(1000 * x for x in r["windows"] if x > 0)
        notes = [f"{r['extra_gets']} 'good' answers after acknowledgements"]
        if stale_w:
            notes.append(f"stale windows p50 {pct(stale_w, 0.5):.2f} ms, p99 {pct(stale_w, 0.99):.2f} ms")
        notes.append(f"cached GET runs {', '.join(f'{x:.0f}' for x in r['rates'])}/s "
                     f"(p99 latency {statistics.median(r['p99s']):.2f} ms)")
        if r["reconnects"]:
            notes.append(f"{r['reconnects']} connection pairs pinned anew")
        if r["problems"]:
            notes.append(f"load problems: {'; '.join(r['problems'])}")
        notes.append(f"issuance {r['issue_s']:.0f} s, rounds {r['rounds_s']:.0f} s")
        print(f"{label}: " + "; ".join(notes))
    off, on = results["wait off"], results["wait on"]
    lat_off, lat_on = [1000 * x for x in off["latencies"]], [1000 * x for x in on["latencies"]]
    print(f"\nstale rounds: {off['stale']} without the wait, {on['stale']} with it (goal 0)")
    print(f"cached GET rate with the wait / without: {on['rate']:.0f} / {off['rate']:.0f} = "
          f"{on['rate'] / off['rate']:.2f} (goal >= 0.90)")
    print(f"revocation latency with the wait / without: p50 {pct(lat_on, 0.5):.2f} / {pct(lat_off, 0.5):.2f} ms "
          f"= {pct(lat_on, 0.5) / pct(lat_off, 0.5):.2f}x, p99 {pct(lat_on, 0.99):.2f} / {pct(lat_off, 0.99):.2f} ms "
          f"= {pct(lat_on, 0.99) / pct(lat_off, 0.99):.2f}x")
    print(f"whole run: {total:.0f} s")


if __name__ == "__main__":
    main()
