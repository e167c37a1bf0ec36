"""The audit trail's hash chain: how fast `shomei audit verify` checks a million records, and what the
chaining trigger costs the writers, in one run.

    .venv/bin/python -m benchmarks.bench_audit_verify [--records 1000000] [--chunk 100000]
                                                      [--tx-seconds 5] [--clients 1,16,64]

On a private stack (benchmarks/stack.py: PostgreSQL with its owner and service roles, a SoftHSM token
holding the audit key):

1. **Fill**: ``--records`` audit records written as the service role through the trigger, with
   INSERT ... SELECT generate_series in statements of ``--chunk`` rows (one transaction each), a
   checkpoint signed after each.
2. **Verify**: shomei.audit.verify over all of them (one snapshot, server-side cursor, the chain
   recomputed in Python, every checkpoint's signature checked with the token's public key), then the
   `shomei audit verify` command itself (process start, migrations check and token login included).
3. **Writers, with and without the chain**: the same inserts into audit_log (chained) and into
   audit_plain, a copy of the table as it was before migration 0009 (no seq, hashes, trigger): a set-based
   statement of ``--chunk`` rows, and ``--tx-seconds`` of small transactions (one audit record each, as
   the services write them) from each number of concurrent ``--clients``. The chain serialises audited
   transactions: the head row's lock is held from the first audit record to the commit.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import asyncpg

from benchmarks.stack import EXE, Stack

ROW = ("'revoke', int8send(g), 'bench-' || g, jsonb_build_object('reason', 3, 'kind', 'signing', "
       "'source', 'feed')")


async def _fill(rt, total: int, chunk: int) -> float:
    from shomei.audit import checkpoint

    start = time.perf_counter()
    done = 0
    while done < total:
        n = min(chunk, total - done)
        async with rt.pool.acquire() as conn:
            await conn.execute(f"INSERT INTO audit_log (action, serial, request_id, details) SELECT {ROW}"
                               f" FROM generate_series($1::bigint, $2::bigint) AS g", done + 1, done + n)
        done += n
        await checkpoint(rt)
        print(f"  filled {done:,}", end="\r", flush=True)
    print()
    return total / (time.perf_counter() - start)


async def _make_plain(owner_url: str, service_role: str) -> None:
    """audit_plain: audit_log as it was before migration 0009 (same columns, defaults, indexes and foreign
    key)."""
    conn = await asyncpg.connect(owner_url)
    try:
        await conn.execute("DROP TABLE IF EXISTS audit_plain")
        await conn.execute("CREATE TABLE audit_plain (LIKE audit_log INCLUDING DEFAULTS)")
        await conn.execute("ALTER TABLE audit_plain DROP COLUMN seq, DROP COLUMN prev_hash, DROP COLUMN hash,"
                           " DROP CONSTRAINT IF EXISTS audit_log_at_finite")
        await conn.execute("CREATE SEQUENCE audit_plain_id_seq OWNED BY audit_plain.id")
        await conn.execute("ALTER TABLE audit_plain ALTER COLUMN id SET DEFAULT nextval('audit_plain_id_seq'),"
                           " ADD PRIMARY KEY (id)")
        await conn.execute("CREATE INDEX audit_plain_serial ON audit_plain (serial)")
        await conn.execute("ALTER TABLE audit_plain ADD FOREIGN KEY (client_id) REFERENCES client (id)")
        await conn.execute(f'GRANT SELECT, INSERT ON audit_plain TO "{service_role}"')
        await conn.execute(f'GRANT USAGE ON SEQUENCE audit_plain_id_seq TO "{service_role}"')
    finally:
        await conn.close()


async def _bulk(pool, table: str, n: int) -> float:
    async with pool.acquire() as conn:
        start = time.perf_counter()
        await conn.execute(f"INSERT INTO {table} (action, serial, request_id, details) SELECT {ROW}"
                           f" FROM generate_series(1, $1::bigint) AS g", n)
        return n / (time.perf_counter() - start)


async def _transactions(pool, table: str, clients: int, seconds: float) -> tuple[float, float]:
    """Small transactions of one audit record each (from ``clients`` connections at once): per second,
    and the median latency in ms."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        k = 0
        async with pool.acquire() as conn:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} (client_id, operator_id, action, serial, request_id,"
                                       f" details) VALUES (NULL, 'clerk-01', 'hold', $1, $2, $3)",
                                       os.urandom(16), f"tx-{i}-{k}", {"kind": "auth", "reason": 6})
                latencies.append(time.perf_counter() - t0)
                k += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000


async def run(stack: Stack, args) -> None:
    from hsm.ceremony import ensure_audit_key
    from plumbing.runtime import open_runtime
    from shomei.audit import verify

    cfg = stack.config()
    cfg = cfg.replace(server=cfg.server.replace(db_pool_size=max(args.clients) + 4))
    rt = await open_runtime(cfg)  # migrations as the owner, grants to the service role
    try:
        await ensure_audit_key(rt.signer)
        async with rt.pool.acquire() as conn:
            role = await conn.fetchval("SELECT current_user")
        print(f"service role {role}; PostgreSQL {await _server_version(rt.pool)}; {os.cpu_count()} CPUs")

        print(f"\n1. fill: {args.records:,} records through the trigger, {args.chunk:,} per statement")
        rate = await _fill(rt, args.records, args.chunk)
        print(f"   {rate:,.0f} records/s")

        print("\n2. verify")
        start = time.perf_counter()
        result = await verify(rt)
        took = time.perf_counter() - start
        print(f"   in process: {result}")
        print(f"   {took:.2f} s, {result.records / took:,.0f} records/s")
        start = time.perf_counter()
        proc = await asyncio.to_thread(subprocess.run, [EXE, "audit", "verify"], env=stack.env,
                                       capture_output=True, text=True, check=False)
        took_cli = time.perf_counter() - start
        print(f"   `shomei audit verify`: exit {proc.returncode}, {took_cli:.2f} s: {proc.stdout.strip()}")

        print("\n3. writers, chained (audit_log) and not (audit_plain, the table before migration 0009)")
        await _make_plain(cfg.database_owner_url, role)
        for table in ("audit_log", "audit_plain", "audit_log", "audit_plain"):
            print(f"   set-based, {args.chunk:,} rows in one statement, {table:11}: "
                  f"{await _bulk(rt.pool, table, args.chunk):>10,.0f} rows/s")
        for clients in args.clients:
            for table in ("audit_log", "audit_plain"):
                tps, median = await _transactions(rt.pool, table, clients, args.tx_seconds)
                print(f"   one-record transactions, {clients:3} clients, {table:11}: {tps:>8,.0f} tx/s,"
                      f" median {median:6.2f} ms")
        result = await verify(rt)
        print(f"\n   the chain after all of it: {result}")
    finally:
        await rt.close()


async def _server_version(pool) -> str:
    async with pool.acquire() as conn:
        return await conn.fetchval("SHOW server_version")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--tx-seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    args = parser.parse_args()
    with Stack() as stack:
        asyncio.run(run(stack, args))


if __name__ == "__main__":
    sys.exit(main())
