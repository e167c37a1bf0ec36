"""OCSP answers per second and p50/p99 latency: `shomei serve --workers N` (cached GET answers, and
misses that each need a fresh signature) beside `openssl ocsp` as a responder on the same certificates,
and the token's raw signing rate, all in one run.

    .venv/bin/python -m benchmarks.bench_ocsp [--certs 3000] [--concurrency 16,64,256] [--seconds 8]

Load generators: `wrk` (Debian: apt-get install wrk; 2 threads, keep-alive) for shomei, and an aiohttp
client in a separate process opening one connection per request, used for both responders because
`openssl ocsp` serves one request per connection and stalls under wrk's keep-alive connections.
Misses are POSTs with a fresh 16-octet nonce: each answer is signed on demand (RFC 8954). The openssl
responder signs every answer with an in-memory key (`-multi N`: N processes). The stack (PostgreSQL,
SoftHSM) is private to the run and removed afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
import cryptography.x509.oid  # noqa: F401
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp

from benchmarks.bench_issuance import token_rate
from benchmarks.stack import Stack
from shomei.embedded import free_port

NONCE_MARK = b"\xa5" * 16


async def populate(cfg, n: int, revoke_every: int, out: Path) -> dict:
    """Issue ``n`` auth certificates through the issuance service (as POST /v1/certificates does), revoke
    every ``revoke_every``-th, and write what `openssl ocsp` needs: the index, the CA certificate and a
    software responder key with a (self-signed) certificate; it signs every answer, as ours do on a miss."""
    from ca_core.resident import BasicFour
    from ca_core.revocation import Reason, encode_entry
    from issuance.service import IssuanceService, IssueRequest
    from shomei.operations import run_ceremony
    from plumbing.runtime import open_runtime
    from storage import certificates, clients, revocations

    rt = await open_runtime(cfg)
    try:
        await run_ceremony(rt)
        issuer = rt.issuers.current("auth")
        service = IssuanceService.from_runtime(rt)
        async with rt.pool.acquire() as conn:
            client = await clients.register(conn, kind="terminal", name="bench-ocsp-terminal",
                                            municipality_code="131016")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "card")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
        resident = BasicFour(name="山田　花子", name_substitutes="00000", address="東京都千代田区千代田１番１号",
                             address_substitutes="00000000000000", birth_date="319850412", sex="2")
        expires = (dt.date.today() + dt.timedelta(days=3650)).isoformat()

        async def one(i: int) -> int:
            req = IssueRequest(request_id=f"bench-ocsp-{i}", municipality_code="131016",
                               resident_code=f"{secrets.randbelow(10**11):011d}", resident=resident,
                               card_expires_on=expires, signing_csr=None, auth_csr=csr, adult_ward=False)
            result = await service.issue(client, "bench", req)
            return result.certificates[0].serial

        serials = []
        for start in range(0, n, 32):
            serials += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 32))))
        revoked = set(serials[::revoke_every])
        now = rt.clock.now()
        async with rt.pool.acquire() as conn:
            for serial in revoked:
                async with conn.transaction():
                    rec = await certificates.by_serial(conn, serial, for_update=True)
                    await revocations.apply_revocation(conn, rec, reason=int(Reason.key_compromise), at=now,
                                                       effective_at=now, source="operator", source_ref="bench",
                                                       entry_der=encode_entry(rec.serial, now, Reason.key_compromise))
            not_after = await conn.fetchval("SELECT max(not_after) FROM certificate")
    finally:
        await rt.close()
    okey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    oname = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "openssl ocsp responder")])
    ocert = (x509.CertificateBuilder().subject_name(oname).issuer_name(oname).public_key(okey.public_key())
             .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
             .sign(okey, hashes.SHA256()))
    (out / "ca.pem").write_bytes(x509.load_der_x509_certificate(issuer.certificate_der)
                                 .public_bytes(serialization.Encoding.PEM))
    (out / "rsigner.pem").write_bytes(ocert.public_bytes(serialization.Encoding.PEM))
    (out / "rkey.pem").write_bytes(okey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    exp = not_after.strftime("%y%m%d%H%M%SZ")
    rev = now.strftime("%y%m%d%H%M%SZ")
    with open(out / "index.txt", "w") as f:
        for s in serials:
            hexs = format(s, "X").rjust(32, "0")
            if s in revoked:
                f.write(f"R\t{exp}\t{rev},keyCompromise\t{hexs}\tunknown\t/CN={hexs}\n")
            else:
                f.write(f"V\t{exp}\t\t{hexs}\tunknown\t/CN={hexs}\n")
    return {"issuer": issuer, "serials": serials, "revoked": revoked}


def request_der(issuer, serial: int, nonce: bytes | None = None) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate_by_hash(issuer.name_hash_sha1, issuer.key_hash_sha1, serial,
                                                          hashes.SHA1())
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


GET_LUA = """
local paths = {}
for line in io.lines("%(file)s") do paths[#paths + 1] = line end
local i = math.random(#paths)
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""

POST_LUA = """
local pre, suf = {}, {}
local function unhex(h) return (h:gsub("..", function(c) return string.char(tonumber(c, 16)) end)) end
for line in io.lines("%(file)s") do
  local a, b = line:match("(%%x+) (%%x*)")
  pre[#pre + 1] = unhex(a); suf[#suf + 1] = unhex(b)
end
local nonce = %(nonce)s
local i = 0
wrk.headers["Content-Type"] = "application/ocsp-request"
init = function(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) %% 100000) end
request = function()
  i = i %% #pre + 1
  local body = pre[i]
  if nonce then
    local n = {}
    for k = 1, 16 do n[k] = string.char(math.random(0, 255)) end
    body = body .. table.concat(n)
  end
  return wrk.format("POST", "%(path)s", nil, body .. suf[i])
end
"""


def _unit(value: str) -> float:
    m = re.match(r"([0-9.]+)(us|ms|s)", value)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk(url: str, script: Path, concurrency: int, seconds: int) -> dict:
    res = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True)
    out = res.stdout
    if "Requests/sec:" not in out or " 99%" not in out:
        return {"rate": 0.0, "p50": 0.0, "p99": 0.0, "non2xx": 0,
                "errors": (res.stderr or out).strip().replace("\n", " ")[-200:]}
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = _unit(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _unit(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rate": rate, "p50": p50, "p99": p99, "non2xx": int(bad.group(1)) if bad else 0,
            "errors": errors.group(1) if errors else ""}


async def _pyload(url: str, bodies: list[tuple[bytes, bytes]], nonce: bool, concurrency: int,
                  seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": "application/ocsp-request"}
    # One connection per request: `openssl ocsp` serves one request per connection.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as session:
        async def worker(k: int):
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                pre, suf = bodies[i % len(bodies)]
                i += concurrency
                body = pre + (os.urandom(16) if nonce else b"") + suf
                t = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, OSError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1
        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0  # noqa
    return {"rate": len(latencies) / elapsed, "p50": pick(0.50), "p99": pick(0.99), "non2xx": errors, "errors": ""}


def _pyload_process(args, out) -> None:
    out.put(asyncio.run(_pyload(*args)))


def pyload(url: str, bodies, nonce: bool, concurrency: int, seconds: float) -> dict:
    """An aiohttp load generator in a separate process, a new connection per request."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_pyload_process, args=((url, bodies, nonce, concurrency, seconds), q))
    p.start()
    result = q.get(timeout=seconds + 120)
    p.join()
    return result


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def fetch(url: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/ocsp-request"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def check(body: bytes, serial: int, revoked: bool) -> None:
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, resp.response_status
    assert resp.serial_number == serial
    want = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
    assert resp.certificate_status == want, (resp.certificate_status, want)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--certs", type=int, default=3000)
    ap.add_argument("--cached-set", type=int, default=1000, help="distinct certificates asked in the cached runs")
    ap.add_argument("--concurrency", default="16,64,256")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--openssl-multi", type=int, default=2, help="openssl ocsp -multi (processes)")
    ap.add_argument("--misses-only", action="store_true",
                    help="run only the token's raw rate and the keep-alive misses (wrk), no cached GETs, no "
                         "one-connection-per-request load, no openssl; nothing written to benchmarks/results")
    ap.add_argument("--json", metavar="FILE",
                    help="also write the figures there (default: benchmarks/results/ocsp.json)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]

    # The misses come from one address (wrk): lift the per-client limit on nonce signatures, which would
    # otherwise answer most of them from the cache (ocsp.nonce_signatures_per_client).
    with Stack(toml="[ocsp]\nnonce_signatures_per_client = 1000000\n") as stack:
        work = stack.dir / "bench"
        work.mkdir()
        t0 = time.perf_counter()
        data = asyncio.run(populate(stack.config(), args.certs, 10, work))
        issuer, serials, revoked = data["issuer"], data["serials"], data["revoked"]
        print(f"issued {len(serials)} certificates ({len(revoked)} revoked) in {time.perf_counter() - t0:.1f} s")

        sign_rate = token_rate(stack.env, args.workers)
        print(f"token raw signing rate, {args.workers} processes: {sign_rate:.0f}/s")

        cached = serials[:args.cached_set]
        (work / "get.txt").write_text("".join(
            "/ocsp/" + urllib.request.quote(base64.b64encode(request_der(issuer, s)).decode(), safe="") + "\n"
            for s in cached))
        (work / "get.lua").write_text(GET_LUA % {"file": work / "get.txt"})
        lines = []
        for s in serials:
            der = request_der(issuer, s, NONCE_MARK)
            at = der.index(NONCE_MARK)
            lines.append(f"{der[:at].hex()} {der[at + 16:].hex()}\n")
        (work / "nonce.txt").write_text("".join(lines))
        nonce_bodies = [tuple(bytes.fromhex(x) for x in line.split(" ")) for line in lines]
        plain_bodies = [(request_der(issuer, s), b"") for s in serials]
        (work / "miss.lua").write_text(POST_LUA % {"file": work / "nonce.txt", "nonce": "true", "path": "/ocsp"})

        rows = []
        stack.serve(workers=args.workers)
        base = f"http://127.0.0.1:{stack.port}"
        try:
            workers = children(stack.server.pid)
            if not args.misses_only:
                for line in (work / "get.txt").read_text().split()[:]:  # warm: every cached answer signed once
                    fetch(base + line)
                for c in levels:
                    rows.append(("shomei cached GET", c, wrk(base, work / "get.lua", c, args.seconds)))
            for c in levels:
                rows.append(("shomei miss (nonce)", c, wrk(base, work / "miss.lua", c, args.seconds)))
            for c in levels if not args.misses_only else ():
                rows.append(("shomei miss, 1 conn/request", c,
                             pyload(base + "/ocsp", nonce_bodies, True, c, args.seconds)))
            # Correctness after the load: a revoked and a good certificate, through GET and POST.
            bad = next(s for s in serials if s in revoked)
            good = next(s for s in serials if s not in revoked)
            for s, r in ((bad, True), (good, False)):
                der = request_der(issuer, s)
                check(fetch(base + "/ocsp/" + urllib.request.quote(base64.b64encode(der).decode(), safe="")), s, r)
                check(fetch(base + "/ocsp", request_der(issuer, s, secrets.token_bytes(16))), s, r)
            shomei_mem = peak_rss_mb(workers)
        finally:
            stack.stop_server()
        if args.misses_only:
            print(f"\nOCSP misses, {os.cpu_count()} cores, wrk -t2 on the same machine, {args.seconds} s per run")
            for name, c, r in rows:
                print(f"{name:28} {c:>5} {r['rate']:>10.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}  "
                      f"ratio {r['rate'] / sign_rate:.2f}" + (f"  non-2xx {r['non2xx']}" if r["non2xx"] else "")
                      + (f"  socket errors {r['errors']}" if r["errors"] else ""))
            miss_best = max(r["rate"] for _n, _c, r in rows)
            print(f"token raw signing rate ({args.workers} processes): {sign_rate:.0f}/s")
            print(f"best miss: {miss_best:.0f}/s = {miss_best / sign_rate:.2f} of the token's signing rate "
                  f"(goal >= 0.80), shomei worker peak RSS {shomei_mem:.0f} MB")
            return

        port = free_port()
        cmd = ["openssl", "ocsp", "-index", str(work / "index.txt"), "-CA", str(work / "ca.pem"),
               "-rsigner", str(work / "rsigner.pem"), "-rkey", str(work / "rkey.pem"), "-port", str(port),
               "-nmin", "15"]
        if args.openssl_multi > 1:
            cmd += ["-multi", str(args.openssl_multi)]
        # Not in a session of its own: `-multi` makes its own process group (setpgid fails for a leader).
        osl = subprocess.Popen(cmd, stdout=open(work / "openssl.log", "w"), stderr=subprocess.STDOUT)
        try:
            obase = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    check(fetch(obase + "/", request_der(issuer, bad)), bad, True)
                    check(fetch(obase + "/", request_der(issuer, good)), good, False)
                    break
                except OSError as exc:
                    last = exc
                    time.sleep(0.1)
            else:
                raise RuntimeError(f"openssl ocsp did not answer ({last!r}, exit {osl.poll()}): "
                                   + (work / "openssl.log").read_text()[-1000:])
            for c in levels:
                rows.append((f"openssl ocsp -multi {args.openssl_multi}", c,
                             pyload(obase + "/", plain_bodies, False, c, args.seconds)))
            openssl_mem = peak_rss_mb([osl.pid] + children(osl.pid))
        finally:
            kids = children(osl.pid)  # -multi children; its parent does not stop them on SIGTERM
            for pid in [osl.pid] + kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            osl.wait(timeout=10)

    print(f"\nOCSP, {os.cpu_count()} cores, load generator wrk -t2 on the same machine, {args.seconds} s per run")
    print(f"{'responder':28} {'conc':>5} {'answers/s':>10} {'p50 ms':>8} {'p99 ms':>8}  notes")
    for name, c, r in rows:
        notes = ", ".join(x for x in (f"non-2xx {r['non2xx']}" if r["non2xx"] else "",
                                      f"socket errors {r['errors']}" if r["errors"] else "") if x)
        print(f"{name:28} {c:>5} {r['rate']:>10.0f} {r['p50']:>8.2f} {r['p99']:>8.2f}  {notes}")
    best = lambda prefix: max(r["rate"] for n, _c, r in rows if n.startswith(prefix))  # noqa: E731
    cached_best, miss_best, openssl_best = best("shomei cached"), best("shomei miss"), best("openssl")
    like_best = best("shomei miss, 1 conn")
    print(f"\ntoken raw signing rate ({args.workers} processes): {sign_rate:.0f}/s")
    print(f"best cached: {cached_best:.0f}/s (goal >= 10000): {cached_best / openssl_best:.1f}x openssl ocsp")
    print(f"best miss:   {miss_best:.0f}/s = {100 * miss_best / sign_rate:.0f}% of the token's signing rate "
          f"(goal >= 80%)")
    print(f"same client (1 connection/request, fresh signature each): shomei {like_best:.0f}/s vs openssl ocsp "
          f"{openssl_best:.0f}/s = {like_best / openssl_best:.2f}x")
    print(f"peak RSS: shomei workers {shomei_mem:.0f} MB, openssl ocsp {openssl_mem:.0f} MB")
    from benchmarks.charts import write_results
    write_results(args.json, "ocsp", workers=args.workers, seconds=args.seconds, certs=args.certs,
                  token_per_s=sign_rate, token_processes=args.workers,
                  rows=[{"responder": name, "concurrency": c, "answers_per_s": r["rate"], "p50_ms": r["p50"],
                         "p99_ms": r["p99"], "non2xx": r["non2xx"], "socket_errors": r["errors"]}
                        for name, c, r in rows],
                  peak_rss_mb={"shomei_workers": shomei_mem, "openssl_ocsp": openssl_mem})


if __name__ == "__main__":
    main()
