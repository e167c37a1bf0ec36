"""All the CRLs of a nation republished: N revoked certificates (default 20,000,000) spread over
partitions of 100,000 certificates (200 partition CRLs), then every partition's complete CRL and the
full CRL published in one pass, with K publishing processes side by side (each takes the scopes whose
lease is free, as the schedulers of several hosts do). Reports the wall time, entries per second, the
octets written (files and PostgreSQL content) and each publisher's peak memory.

    .venv/bin/python -m benchmarks.bench_crl_nation [--entries 20000000] [--partition-size 100000]
                                                    [--publishers 1,2]

The rows are generated inside PostgreSQL as benchmarks/bench_crl.py does; the stack is private to the run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from benchmarks.bench_crl import ID_BASE, _db, _prepare_and_close, _vm_hwm_mb, load
from benchmarks.charts import write_results
from benchmarks.stack import Stack


def child(index: str, count: str) -> None:
    """One publisher: publishes every scope's complete CRL whose lease it gets, in turn."""
    from ca_core import config
    from crl_publisher.publisher import Publisher
    from plumbing.runtime import open_runtime

    async def run():
        rt = await open_runtime(config.load(), migrate=False)
        try:
            pub = Publisher.from_runtime(rt)
            issuer = rt.issuers.current("signing")
            targets = await pub.targets(issuer, "base")
            # each publisher starts at its own offset, so they meet as late as possible
            k, n = int(index), int(count)
            targets = targets[k * len(targets) // n:] + targets[:k * len(targets) // n]
            start = time.perf_counter()
            published = entries = size = 0
            async with rt.pool.acquire() as conn:
                done_before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM crl")
            for t in targets:
                async with rt.pool.acquire() as conn:  # skip what another publisher did meanwhile
                    if await conn.fetchval("SELECT 1 FROM crl WHERE id > $1 AND path = $2", done_before, t.path):
                        continue
                outcome = await pub.publish(t)
                if outcome.published:
                    published += 1
                    entries += outcome.published.entries
                    size += outcome.published.bytes
            return time.perf_counter() - start, published, entries, size
        finally:
            await rt.close()

    seconds, published, entries, size = asyncio.run(run())
    print(json.dumps({"seconds": seconds, "published": published, "entries": entries, "bytes": size,
                      "rss_mb": _vm_hwm_mb()}), flush=True)


def run(env: dict, publishers: int) -> dict:
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_crl_nation", "--child", str(i), str(publishers)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(publishers)]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"publisher failed: {err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    return {"publishers": publishers, "wall_seconds": wall, "crls": sum(r["published"] for r in results),
            "entries": sum(r["entries"] for r in results), "bytes": sum(r["bytes"] for r in results),
            "peak_mb": max(r["rss_mb"] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=20_000_000)
    ap.add_argument("--partition-size", type=int, default=100_000)
    ap.add_argument("--publishers", default="1,2")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="FILE", help="also write the figures there (default: "
                    "benchmarks/results/crl_nation.json)")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    rows = []
    with Stack(f"[issuance]\npartition_size = {args.partition_size}\n") as stack:
        gen_id, partition_size = asyncio.run(_prepare_and_close(stack))
        t0 = time.perf_counter()
        asyncio.run(_db(stack, lambda conn: load(conn, gen_id=gen_id, start=ID_BASE, count=args.entries,
                                                 partition_size=partition_size, bulk=True)))
        asyncio.run(_db(stack, lambda conn: conn.execute("VACUUM ANALYZE revocation")))
        print(f"loaded {args.entries:,} revoked certificates in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for k in [int(x) for x in args.publishers.split(",")]:
            r = run(stack.env, k)
            rows.append(r)
            print(f"{k} publisher(s): {r['crls']} CRLs, {r['entries']:,} entries, {r['bytes'] / 1e6:,.0f} MB in "
                  f"{r['wall_seconds']:.1f} s", file=sys.stderr)
    print()
    print(f"All CRLs of {args.entries:,} revoked certificates in partitions of {args.partition_size:,} "
          f"({os.cpu_count()} cores; goal: <= 10 s)")
    print("| publishers | CRLs | entries written | MB written | seconds | entries/s | peak MB per publisher |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['publishers']} | {r['crls']} | {r['entries']:,} | {r['bytes'] / 1e6:,.0f} | "
              f"{r['wall_seconds']:.1f} | {r['entries'] / r['wall_seconds']:,.0f} | {r['peak_mb']:.0f} |")
    write_results(args.json, "crl_nation", entries_loaded=args.entries, partition_size=args.partition_size, rows=rows)


if __name__ == "__main__":
    main()
