"""Rates as the tables grow: issuance (certificates/s, mTLS, `shomei serve --workers 2`), OCSP misses
(answers/s, each signed on demand for a fresh nonce) and a delta CRL of 10,000 changes (seconds), measured
on the same stack with 0, 1,000,000 and 10,000,000 certificates already in the database (one in five
revoked: 2,000,000 revocations at 10 million), beside the token's raw signing rate in the same run.

    .venv/bin/python -m benchmarks.bench_table_size [--sizes 0,1000000,10000000] [--requests 2000]
                                                    [--seconds 8] [--workers 2]

The rows are generated inside PostgreSQL as benchmarks/bench_crl.py does (minimal certificate rows and
revocations with their entry DER, signing CA); the OCSP misses ask for real certificates issued through
the service at the start, so their rows sit among the generated ones. The stack is private to the run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from benchmarks.bench_crl import ID_BASE, _db, load, run_child
from benchmarks.bench_issuance import _bodies, _csr, _keys, run_load, token_rate
from benchmarks.bench_ocsp import NONCE_MARK, POST_LUA, populate, request_der, wrk
from benchmarks.charts import write_results
from benchmarks.stack import Stack

DELTA_CHANGES = 10_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,1000000,10000000")
    ap.add_argument("--requests", type=int, default=2000, help="issuance requests per size (concurrency 16)")
    ap.add_argument("--seconds", type=int, default=8, help="length of the OCSP miss run (concurrency 64)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ocsp-certs", type=int, default=2000)
    ap.add_argument("--json", metavar="FILE", help="also write the figures there (default: "
                    "benchmarks/results/table_size.json)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    csrs = [_csr(k) for k in _keys(32)]
    rows = []
    # The misses come from one address (wrk): lift the per-client limit on nonce signatures, as
    # benchmarks/bench_ocsp.py does.
    with Stack(toml="[ocsp]\nnonce_signatures_per_client = 1000000\n") as stack:
        work = stack.dir / "work"
        work.mkdir()
        data = asyncio.run(populate(stack.config(), args.ocsp_certs, 10, work))
        issuer = data["issuer"]
        lines = []
        for s in data["serials"]:
            der = request_der(issuer, s, NONCE_MARK)
            at = der.index(NONCE_MARK)
            lines.append(f"{der[:at].hex()} {der[at + 16:].hex()}\n")
        (work / "nonce.txt").write_text("".join(lines))
        (work / "miss.lua").write_text(POST_LUA % {"file": work / "nonce.txt", "nonce": "true", "path": "/ocsp"})
        gen_id = asyncio.run(_db(stack, lambda conn: conn.fetchval(
            "SELECT id FROM ca_generation WHERE ca_id = 'signing' AND is_current")))
        loaded = 0
        for size in sizes:
            t0 = time.perf_counter()
            if size > loaded:
                asyncio.run(_db(stack, lambda conn: load(conn, gen_id=gen_id, start=ID_BASE + loaded,
                                                         count=size - loaded, partition_size=100_000, bulk=True,
                                                         revoke_one_in=5)))
                loaded = size
            asyncio.run(_db(stack, lambda conn: conn.execute("VACUUM ANALYZE")))
            counts = asyncio.run(_db(stack, lambda conn: conn.fetchrow(
                "SELECT (SELECT count(*) FROM certificate) AS c, (SELECT count(*) FROM revocation) AS r")))
            print(f"{counts['c']:,} certificates, {counts['r']:,} revocations ({time.perf_counter() - t0:.0f} s "
                  "to load)", flush=True)
            stack.serve(workers=args.workers)
            try:
                terminal = stack.demo_credential("demo-terminal")
                url = f"{stack.private_url}/v1/certificates"
                run_load(url, terminal, _bodies(csrs, 200, f"warm{size}"), 16)
                res = run_load(url, terminal, _bodies(csrs, args.requests, f"n{size}"), 16)
                issuance = 2 * (res["requests"] - res["errors"]) / res["elapsed"]
                miss = wrk(f"http://127.0.0.1:{stack.port}", work / "miss.lua", 64, args.seconds)
            finally:
                stack.stop_server()
            token = token_rate(stack.env, args.workers)
            # a delta of 10,000 changes against a fresh complete CRL
            run_child(stack.env, "shomei", "base")
            asyncio.run(_db(stack, lambda conn: load(conn, gen_id=gen_id, start=ID_BASE + loaded, count=DELTA_CHANGES,
                                                     partition_size=100_000)))
            loaded += DELTA_CHANGES
            delta = run_child(stack.env, "shomei", "delta")
            if delta["entries"] < DELTA_CHANGES:
                raise RuntimeError(f"delta has {delta['entries']} entries, expected {DELTA_CHANGES} or more")
            row = {"table_rows": size, "certificates": counts["c"], "revocations": counts["r"],
                   "issuance_per_s": issuance, "issuance_p99_ms": res["p99_ms"], "issuance_errors": res["errors"],
                   "ocsp_miss_per_s": miss["rate"], "ocsp_miss_p99_ms": miss["p99"], "ocsp_non2xx": miss["non2xx"],
                   "token_per_s": token, "delta_crl_s": delta["seconds"], "delta_entries": delta["entries"]}
            rows.append(row)
            print(f"  issuance {issuance:.0f}/s, OCSP misses {miss['rate']:.0f}/s, token {token:.0f}/s, "
                  f"delta CRL {delta['seconds']:.3f} s", flush=True)
    print()
    print(f"Rates against table size ({os.cpu_count()} cores, {args.workers} workers; token = raw signing rate, "
          "same run)")
    print("| certificates in the database | revocations | issuance certs/s (of token) | OCSP misses/s (of token) "
          "| delta CRL, 10,000 changes |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['certificates']:,} | {r['revocations']:,} | {r['issuance_per_s']:,.0f} "
              f"({r['issuance_per_s'] / r['token_per_s']:.0%}) | {r['ocsp_miss_per_s']:,.0f} "
              f"({r['ocsp_miss_per_s'] / r['token_per_s']:.0%}) | {r['delta_crl_s']:.3f} s |")
    write_results(args.json, "table_size", workers=args.workers, rows=rows)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
