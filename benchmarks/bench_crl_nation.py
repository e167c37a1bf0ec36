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
    """One publisher, as the scheduler of a host runs it: every complete CRL of the generation (the full CRL
    and every partition's) in one pass from one snapshot (Publisher.publish_complete), if it gets the
    leases; a publisher that finds them taken publishes nothing (another host is doing the pass)."""
    import logging
    if os.environ.get("BENCH_PHASES"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    from ca_core import config
    from crl_publisher.publisher import Publisher
    from plumbing.runtime import open_runtime

    async def run():
        rt = await open_runtime(config.load(), migrate=False)
        try:
            pub = Publisher.from_runtime(rt)
            issuer = rt.issuers.current("signing")
            # the others start a little later, as schedulers on several hosts do, and find the leases taken
            await asyncio.sleep(0.2 * int(index))
            start = time.perf_counter()
            outcomes = await pub.publish_complete(issuer)
            done = [o.published for o in outcomes if o.published]
            return (time.perf_counter() - start, len(done), sum(p.entries for p in done),
                    sum(p.bytes for p in done))
        finally:
            await rt.close()

    seconds, published, entries, size = asyncio.run(run())
    print(json.dumps({"seconds": seconds, "published": published, "entries": entries, "bytes": size,
                      "rss_mb": _vm_hwm_mb()}), flush=True)


async def _database_figures(url: str, since_id: int | None = None) -> dict:
    """WAL position and highest CRL id; with ``since_id``, the octets of CRL content the CRLs after it
    stored themselves (raw, and as stored: compressed where it compresses; referenced parts not counted)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        if since_id is None:
            return dict(await conn.fetchrow("SELECT pg_current_wal_lsn()::text AS lsn,"
                                            " (SELECT coalesce(max(id), 0) FROM crl) AS last_id"))
        return dict(await conn.fetchrow(
            "SELECT coalesce(sum(octet_length(data)), 0) AS raw, coalesce(sum(pg_column_size(data)), 0) AS stored"
            " FROM crl_content WHERE crl_id > $1", since_id))
    finally:
        await conn.close()


async def _wal_bytes(url: str, since: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", since))
    finally:
        await conn.close()


def run(env: dict, publishers: int) -> dict:
    url = env["DATABASE_OWNER_URL"]
    before = asyncio.run(_database_figures(url))
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_crl_nation", "--child", str(i), str(publishers)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(publishers)]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"publisher failed: {err[-3000:]}")
        if os.environ.get("BENCH_PHASES"):
            sys.stderr.write(err[-20000:])
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    wal = asyncio.run(_wal_bytes(url, before["lsn"]))
    after = asyncio.run(_database_figures(url, before["last_id"]))
    return {"publishers": publishers, "wall_seconds": wall, "crls": sum(r["published"] for r in results),
            "entries": sum(r["entries"] for r in results), "bytes": sum(r["bytes"] for r in results),
            "peak_mb": max(r["rss_mb"] for r in results), "wal_bytes": wal,
            "db_content_bytes": int(after["raw"]), "db_stored_bytes": int(after["stored"])}


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
        # the loader's gigabytes go to disk before the clock starts (a checkpoint, then the page cache): the
        # publishers' file syncs and commits are not measured against the loader's writeback
        asyncio.run(_db(stack, lambda conn: conn.execute("CHECKPOINT")))
        os.sync()
        print(f"loaded {args.entries:,} revoked certificates in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for k in [int(x) for x in args.publishers.split(",")]:
            r = run(stack.env, k)
            rows.append(r)
            print(f"{k} publisher(s): {r['crls']} CRLs, {r['entries']:,} entries, {r['bytes'] / 1e6:,.0f} MB in "
                  f"{r['wall_seconds']:.1f} s", file=sys.stderr)
    print()
    print(f"All CRLs of {args.entries:,} revoked certificates in partitions of {args.partition_size:,} "
          f"({os.cpu_count()} cores; goal: <= 10 s)")
    print("| publishers | CRLs | entries written | MB of CRLs (files) | MB of content stored in PostgreSQL"
          " (raw / on disk) | MB of WAL | seconds | entries/s | peak MB per publisher |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['publishers']} | {r['crls']} | {r['entries']:,} | {r['bytes'] / 1e6:,.0f} | "
              f"{r['db_content_bytes'] / 1e6:,.0f} / {r['db_stored_bytes'] / 1e6:,.0f} | "
              f"{r['wal_bytes'] / 1e6:,.0f} | {r['wall_seconds']:.1f} | {r['entries'] / r['wall_seconds']:,.0f} | "
              f"{r['peak_mb']:.0f} |")
    write_results(args.json, "crl_nation", entries_loaded=args.entries, partition_size=args.partition_size, rows=rows)


if __name__ == "__main__":
    main()
