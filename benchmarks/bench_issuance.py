"""End-to-end issuance over HTTP, beside the raw token signing rate, `openssl x509 -req` and
pyca/cryptography's CertificateBuilder, all in one run.

    .venv/bin/python -m benchmarks.bench_issuance [--requests 1500] [--concurrency 1,4,16,64] [--workers 2]
                                                  [--batch 50] [--batch-concurrency 2,4]

Each request issues two certificates (signing + auth), so certificates/s = 2 x requests/s. With --batch N,
the same residents are also issued N to a request through POST /v1/certificate-batches (a municipality
setting up new cards before they are collected), each batch answering every issuance in its place. The server runs
as `shomei serve --workers N` on a private PostgreSQL (durable commits: fsync and synchronous_commit on)
and SoftHSM token; the load generator is one separate process with keep-alive HTTPS connections to the
private listener, presenting the demo terminal's client certificate (var/tls/demo-terminal.crt).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from benchmarks.stack import Stack


def _keys(n: int):
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(n)]


def _csr(key) -> str:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "card")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def _bodies(csrs: list[str], n: int, tag: str) -> list[bytes]:
    return [json.dumps(body, ensure_ascii=False).encode() for body in _requests(csrs, n, tag)]


def _batches(csrs: list[str], n: int, size: int, tag: str) -> list[bytes]:
    """``n`` issuance requests in batches of ``size`` (bodies of POST /v1/certificate-batches)."""
    reqs = _requests(csrs, n, tag)
    return [json.dumps({"requests": reqs[i:i + size]}, ensure_ascii=False).encode() for i in range(0, n, size)]


def _requests(csrs: list[str], n: int, tag: str) -> list[dict]:
    out = []
    for i in range(n):
        body = {
            "request_id": f"bench-{tag}-{i}",
            "municipality_code": "131016",
            "resident_code": f"{secrets.randbelow(10**11):011d}",
            "resident": {"name": "山田　太郎", "name_substitutes": "00000", "address": "東京都千代田区千代田１番１号",
                         "address_substitutes": "00000000000000", "birth_date": "319800515", "sex": "1"},
            "card_expires_on": "2035-05-15",
            "signing_csr": csrs[i % len(csrs)],
            "auth_csr": csrs[(i + 1) % len(csrs)],
        }
        out.append(body)
    return out


async def _load(url: str, credential, bodies: list[bytes], concurrency: int) -> dict:
    """POST ``bodies`` to the private listener as ``credential`` (benchmarks.stack.ClientCredential)."""
    import aiohttp

    plain = url.startswith("http://")  # behind a TLS-terminating proxy: the proxy's header, no TLS here
    headers = {**(credential.proxy_headers() if plain else credential.headers()), "Content-Type": "application/json"}
    batch = url.endswith("/v1/certificate-batches")
    latencies: list[float] = []
    errors = issued = 0
    queue = iter(bodies)
    conn = aiohttp.TCPConnector(limit=concurrency, ssl=False if plain else credential.ssl_context())
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker():
            nonlocal errors, issued
            for body in queue:
                t = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    if batch and resp.status == 200:  # every issuance of the batch answers in its place
                        results = json.loads(data)["results"]
                        ok = sum(r["status"] == 201 for r in results)
                        issued, errors = issued + ok, errors + len(results) - ok
                    elif resp.status == 201:
                        issued += 1
                    else:
                        errors += 1
                latencies.append(time.perf_counter() - t)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(bodies), "issued": issued, "elapsed": elapsed, "errors": errors,
            "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)]}


def _load_process(url, credential, bodies, concurrency, out):
    out.put(asyncio.run(_load(url, credential, bodies, concurrency)))


def run_load(url, credential, bodies, concurrency) -> dict:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load_process, args=(url, credential, bodies, concurrency, q))
    p.start()
    result = q.get()
    p.join()
    return result


def _token_rate(env: dict, seconds: float, out) -> None:
    """Raw signing rate of one process with its own session (the server's signer, no HTTP)."""
    os.environ.update(env)
    from ca_core.algorithms import algorithm_for
    from hsm.pkcs11_signer import PKCS11Signer

    async def main():
        signer = PKCS11Signer(env["SHOMEI_PKCS11_MODULE"], env["SHOMEI_PKCS11_TOKEN"],
                              Path(env["SHOMEI_PKCS11_PIN_FILE"]).read_text().strip())
        await signer.open()
        alg = algorithm_for("rsa2048")
        digest = b"\x01" * 32
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            await signer.sign_digest("shomei-signing-g1", alg, digest)
            n += 1
        rate = n / (time.perf_counter() - start)
        await signer.close()
        return rate
    out.put(asyncio.run(main()))


def token_rate(env: dict, processes: int, seconds: float = 4.0) -> float:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_token_rate, args=(env, seconds, q)) for _ in range(processes)]
    for p in procs:
        p.start()
    rates = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
certificatePolicies = critical, 1.2.392.200149.8.5.1.0.20
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:http://127.0.0.1:8080/crl/signing/g1-p0.crl
"""


def openssl_rate(csrs: list[str], n: int, parallel: int) -> float:
    """`openssl x509 -req` signing the same CSRs with an in-memory CA key, `parallel` at a time."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "ca.key",
                        "-out", d / "ca.pem", "-subj", "/C=JP/O=JPKI-TEST/OU=bench", "-days", "3650"],
                       check=True, capture_output=True)
        (d / "ext.cnf").write_text(_EXT)
        for i, pem in enumerate(csrs):
            (d / f"{i}.csr").write_text(pem)
        script = (f'openssl x509 -req -in {d}/$(( $1 % {len(csrs)} )).csr -CA {d}/ca.pem -CAkey {d}/ca.key '
                  f'-set_serial $(( $1 + 1000 )) -days 1825 -sha256 -extfile {d}/ext.cnf -out /dev/null 2>/dev/null')
        start = time.perf_counter()
        subprocess.run(f"seq 0 {n - 1} | xargs -P {parallel} -I{{}} bash -c '{script}' _ {{}}", shell=True, check=True)
        return n / (time.perf_counter() - start)


def cryptography_rate(csrs: list[str], seconds: float = 3.0) -> float:
    """pyca/cryptography CertificateBuilder with an in-memory key, one process."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "JPKI-TEST")])
    parsed = [x509.load_pem_x509_csr(c.encode()) for c in csrs]
    now = dt.datetime.now(dt.timezone.utc)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        csr = x509.load_pem_x509_csr(csrs[n % len(csrs)].encode())  # parse + verify as the service does
        assert csr.is_signature_valid
        pub = parsed[n % len(parsed)].public_key()
        (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(n))]))
         .issuer_name(ca_name).public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1825))
         .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
         .sign(ca_key, hashes.SHA256()))
        n += 1
    return n / (time.perf_counter() - start)


def openssl_speed() -> float:
    """RSA-2048 signatures/s of one core with OpenSSL, now: how fast this machine is during the run."""
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "rsa2048"], capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith("rsa 2048 bits")][-1]
    return float(line.split()[-2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1500, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keys", type=int, default=64)
    ap.add_argument("--compare-plain", action="store_true",
                    help="also run the private listener in plain HTTP behind a TLS-terminating proxy's header "
                         "(server.private_tls = false): the cost of TLS, same run")
    ap.add_argument("--batch", type=int, default=0, metavar="N",
                    help="also issue the residents N to a request (POST /v1/certificate-batches)")
    ap.add_argument("--batch-concurrency", default="2,4", help="batches in flight, with --batch")
    ap.add_argument("--json", metavar="FILE",
                    help="also write the figures there (default: benchmarks/results/issuance.json)")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    print(f"generating {args.keys} RSA-2048 card keys and CSRs ...", flush=True)
    csrs = [_csr(k) for k in _keys(args.keys)]
    with Stack() as stack:
        stack.serve(workers=args.workers)
        terminal = stack.demo_credential("demo-terminal")
        url = f"{stack.private_url}/v1/certificates"
        run_load(url, terminal, _bodies(csrs, 200, "warmup"), 16)
        rows = []
        peak_rss = 0.0
        for c in levels:
            res = run_load(url, terminal, _bodies(csrs, args.requests, f"c{c}"), c)
            peak_rss = max(peak_rss, stack.server_rss_mb())
            certs = 2 * res["issued"] / res["elapsed"]
            rows.append((c, certs, res["p50_ms"], res["p99_ms"], res["errors"]))
            print(f"  concurrency {c:3}: {certs:7.0f} certificates/s  p50 {res['p50_ms']:6.1f} ms  "
                  f"p99 {res['p99_ms']:6.1f} ms  errors {res['errors']}", flush=True)
        batch_rows = []
        if args.batch:
            url = f"{stack.private_url}/v1/certificate-batches"
            run_load(url, terminal, _batches(csrs, 4 * args.batch, args.batch, "warmup-batch"), 2)
            for c in [int(x) for x in args.batch_concurrency.split(",")]:
                n = max(args.requests, 4 * c * args.batch) // args.batch * args.batch
                res = run_load(url, terminal, _batches(csrs, n, args.batch, f"b{c}"), c)
                certs = 2 * res["issued"] / res["elapsed"]
                batch_rows.append((c, certs, res["p50_ms"], res["p99_ms"], res["errors"]))
                print(f"  batches of {args.batch}, concurrency {c:3}: {certs:7.0f} certificates/s  "
                      f"p50 {res['p50_ms']:6.1f} ms  p99 {res['p99_ms']:6.1f} ms  errors {res['errors']}", flush=True)
                peak_rss = max(peak_rss, stack.server_rss_mb())
        stack.stop_server()
        plain_rows = []
        if args.compare_plain:
            stack.use_proxy_mode()
            stack.serve(workers=args.workers)
            url = f"{stack.private_url}/v1/certificates"
            run_load(url, terminal, _bodies(csrs, 200, "warmup-plain"), 16)
            for c in levels:
                res = run_load(url, terminal, _bodies(csrs, args.requests, f"p{c}"), c)
                certs = 2 * res["issued"] / res["elapsed"]
                plain_rows.append((c, certs, res["p50_ms"], res["p99_ms"], res["errors"]))
                print(f"  plain HTTP, concurrency {c:3}: {certs:7.0f} certificates/s  p50 {res['p50_ms']:6.1f} ms  "
                      f"p99 {res['p99_ms']:6.1f} ms  errors {res['errors']}", flush=True)
            stack.stop_server()
        env = stack.env
        tok1 = token_rate(env, 1)
        tokn = token_rate(env, args.workers)
    ossl = openssl_rate(csrs, 400, args.workers)
    speed = openssl_speed()
    pyca = cryptography_rate(csrs)
    best = max(r[1] for r in rows + batch_rows)
    print()
    print("| measure | certificates/s | ratio |")
    print("|---|---:|---:|")
    for c, certs, p50, p99, _e in rows:
        print(f"| shomei issuance over mTLS, {args.workers} workers, concurrency {c} (p50 {p50:.1f} ms, p99 {p99:.1f} ms) "
              f"| {certs:.0f} | {certs / tokn:.2f} of token |")
    for c, certs, p50, p99, _e in batch_rows:
        print(f"| shomei batches of {args.batch} over mTLS, concurrency {c} (p50 {p50:.0f} ms, p99 {p99:.0f} ms "
              f"a batch) | {certs:.0f} | {certs / tokn:.2f} of token |")
    for (c, certs, p50, p99, _e), tls_row in zip(plain_rows, rows):
        print(f"| the same over plain HTTP behind a TLS proxy's header, concurrency {c} (p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms) | {certs:.0f} | mTLS / plain = {tls_row[1] / certs:.2f} |")
    print(f"| raw token signing, 1 process (python-pkcs11 + SoftHSMv2) | {tok1:.0f} | |")
    print(f"| raw token signing, {args.workers} processes | {tokn:.0f} | 1.00 |")
    print(f"| `openssl x509 -req`, {args.workers} in parallel, key in memory | {ossl:.0f} | shomei best / openssl = {best / ossl:.1f} |")
    print(f"| pyca/cryptography CertificateBuilder, 1 process, key in memory | {pyca:.0f} | shomei best / pyca = {best / pyca:.2f} |")
    print(f"| (machine speed now) `openssl speed rsa2048`, 1 core | {speed:.0f} signatures/s | |")
    print(f"\nserver peak RSS (master + {args.workers} workers): {peak_rss:.0f} MB")
    from benchmarks.charts import write_results
    keys = ("concurrency", "certs_per_s", "p50_ms", "p99_ms", "errors")
    write_results(args.json, "issuance", workers=args.workers, requests=args.requests,
                  mtls=[dict(zip(keys, r)) for r in rows], plain=[dict(zip(keys, r)) for r in plain_rows],
                  batch_size=args.batch, batch=[dict(zip(keys, r)) for r in batch_rows],
                  baselines={"token_1_process_per_s": tok1, "token_per_s": tokn, "openssl_x509_per_s": ossl,
                             "cryptography_per_s": pyca, "openssl_speed_rsa2048_per_s": speed},
                  server_peak_rss_mb=peak_rss)


if __name__ == "__main__":
    main()
