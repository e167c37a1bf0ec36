"""The tamper-evident audit trail (migration 0009, shomei/audit.py, `shomei audit verify`) on the real
PostgreSQL and SoftHSM token of the session.

History is written as the service role (the role of DATABASE_URL), in many concurrent transactions,
some rolled back, with storage.audit.record and set-based INSERT ... SELECT and executemany. Tampering
is done as the owner (DATABASE_OWNER_URL), each case in its own copy of a database (CREATE DATABASE
... TEMPLATE), so that the cases do not see each other and the session's database is left alone.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import secrets
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from ca_core import audit as chain
from ca_core.errors import HSMError
from hsm.ceremony import AUDIT_KEY_LABEL
from shomei import audit as audit_ops
from storage import audit, db


def _db_url(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


class _Rollback(Exception):
    pass


async def write_history(pool, transactions: int = 50, *, tag: str = "h") -> int:
    """``transactions`` concurrent transactions of audit records (one row, a multi-row INSERT ... SELECT,
    an executemany), every fifth rolled back; returns how many records were committed."""
    committed = 0

    async def one(i: int) -> None:
        nonlocal committed
        bulk = 1 + i % 7
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await audit.record(conn, action="test_single", operator_id=f"op-{i}", request_id=f"{tag}-{i}",
                                       serial=secrets.token_bytes(16), details={"i": i, "name": "山田　太郎"})
                    await asyncio.sleep(random.random() / 100)
                    await conn.execute(
                        "INSERT INTO audit_log (action, serial, request_id, details)"
                        " SELECT 'test_bulk', int8send(g), $1 || '-' || g, jsonb_build_object('g', g, 'kind', 'signing')"
                        " FROM generate_series(1, $2::int) AS g", f"{tag}-{i}", bulk)
                    await conn.executemany("INSERT INTO audit_log (action, request_id) VALUES ('test_many', $1)",
                                           [(f"{tag}-{i}-a",), (f"{tag}-{i}-b",)])
                    if i % 5 == 0:
                        raise _Rollback
            except _Rollback:
                return
        committed += 1 + bulk + 2

    await asyncio.gather(*(one(i) for i in range(transactions)))
    return committed


@dataclasses.dataclass
class Copy:
    """A database of its own: URLs as the service and as the owner, and a Runtime on it."""

    name: str
    service_url: str
    owner_url: str
    rt: object

    async def owner(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.owner_url)


async def _create(cfg, name: str, template: str | None = None) -> None:
    admin = await asyncpg.connect(cfg.database_owner_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await admin.close()


async def _drop(cfg, name: str) -> None:
    admin = await asyncpg.connect(cfg.database_owner_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="module")
async def base_db(cfg, rt):
    """A migrated database (migrations as the owner, then the grants) with a history and a checkpoint
    in the middle of it; the template of every case."""
    name = f"shomei_audit_{secrets.token_hex(4)}"
    await _create(cfg, name)
    service, owner = _db_url(cfg.database_url, name), _db_url(cfg.database_owner_url, name)
    await asyncio.to_thread(db.migrate, service, owner)
    pool = await db.create_pool(service, min_size=1, max_size=20)
    try:
        first = await write_history(pool, tag="a")
        signed = await audit_ops.checkpoint(dataclasses.replace(rt, pool=pool))
        assert signed == first
        second = await write_history(pool, 20, tag="b")
    finally:
        await pool.close()
    yield name, first + second
    await _drop(cfg, name)


@pytest_asyncio.fixture
async def copy(cfg, rt, base_db):
    name = f"{base_db[0]}_{secrets.token_hex(3)}"
    await _create(cfg, name, template=base_db[0])
    service = _db_url(cfg.database_url, name)
    pool = await db.create_pool(service, min_size=1, max_size=20)
    yield Copy(name, service, _db_url(cfg.database_owner_url, name), dataclasses.replace(rt, pool=pool))
    await pool.close()
    await _drop(cfg, name)


async def _verify(c: Copy):
    return await audit_ops.verify(c.rt, batch=25)  # small batches: the checks cross batch ends


# -- an intact history ---------------------------------------------------------------------------

async def test_history_verifies_with_its_checkpoint(copy, base_db):
    result = await _verify(copy)
    assert isinstance(result, chain.Summary), result
    assert result.records == result.last_seq == base_db[1]
    assert result.checkpoints == 1 and 0 < result.last_checkpoint_seq < result.last_seq
    assert await audit_ops.checkpoint(copy.rt) == result.last_seq
    assert await audit_ops.checkpoint(copy.rt) is None  # the head did not move
    again = await _verify(copy)
    assert (again.checkpoints, again.after_last_checkpoint) == (2, 0)


async def test_the_session_database_verifies(rt):
    """The session's own database, with whatever the other tests recorded in it, as the service role."""
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == "shomei_app"
        async with conn.transaction():
            await audit.record(conn, action="test_session", details={"x": 1})
            await conn.executemany("INSERT INTO audit_log (action, request_id) VALUES ('test_session', $1)",
                                   [("s-1",), ("s-2",)])
    seq = await audit_ops.checkpoint(rt)
    result = await audit_ops.verify(rt)
    assert isinstance(result, chain.Summary), result
    assert result.last_seq == seq and result.after_last_checkpoint == 0 and result.checkpoints >= 1


async def test_concurrent_transactions_chain_contiguously(copy):
    async with copy.rt.pool.acquire() as conn:
        before = await conn.fetchval("SELECT count(*) FROM audit_log")
    committed = await write_history(copy.rt.pool, 50, tag="c")
    async with copy.rt.pool.acquire() as conn:
        count, distinct, top, head = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT seq), max(seq), (SELECT seq FROM audit_head) FROM audit_log")
    assert count == distinct == top == head == before + committed
    result = await _verify(copy)
    assert isinstance(result, chain.Summary) and result.records == count, result


# -- the service role cannot rewrite it ----------------------------------------------------------

@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET details = '{}' WHERE seq = 1",
    "DELETE FROM audit_log WHERE seq = 1",
    "TRUNCATE audit_log",
    "UPDATE audit_head SET seq = 0",
    "INSERT INTO audit_head (seq, hash) VALUES (0, '\\x00')",
    "DELETE FROM audit_checkpoint",
    "UPDATE audit_checkpoint SET signature = '\\x00'",
    "TRUNCATE audit_checkpoint",
])
async def test_the_service_role_may_not_change_the_trail(rt, statement):
    async with rt.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)


# -- tampering by the owner ----------------------------------------------------------------------

def _psql(url: str, sql: str) -> str:
    """Run ``sql`` with psql, as an operator at a terminal would (one statement, stop on error)."""
    import subprocess

    res = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qtAc", sql], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


async def test_a_changed_record_is_named(copy):
    rid = int(_psql(copy.owner_url, "UPDATE audit_log SET details = details || '{\"reason\": 1}' WHERE seq = 12"
                                    " RETURNING id").split()[0])
    p = await _verify(copy)
    assert isinstance(p, chain.Problem) and (p.kind, p.seq, p.id) == ("changed", 12, rid), p
    assert f"seq 12 (id {rid})" in p.message


async def test_a_deleted_record_is_named(copy):
    _psql(copy.owner_url, "DELETE FROM audit_log WHERE seq = 30")
    p = await _verify(copy)
    assert isinstance(p, chain.Problem) and p.kind == "deleted" and "seq 30 missing" in p.message, p


async def test_a_deleted_tail_is_named(copy):
    conn = await copy.owner()
    try:
        top = await conn.fetchval("SELECT max(seq) FROM audit_log")
        await conn.execute("DELETE FROM audit_log WHERE seq > $1", top - 3)
    finally:
        await conn.close()
    p = await _verify(copy)
    assert isinstance(p, chain.Problem) and p.kind == "deleted", p
    assert f"seqs {top - 2}..{top}" in p.message


async def test_a_record_inserted_in_the_middle_is_named(copy):
    """The owner turns the trigger off, moves every later record up by one, and inserts a record with the
    free seq, chained correctly to the record before it (and moves the head)."""
    k = 20
    conn = await copy.owner()
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_chain")
            await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_chain_head")
            prev = await conn.fetchval("SELECT hash FROM audit_log WHERE seq = $1", k - 1)
            await conn.execute("UPDATE audit_log SET seq = seq + 1 WHERE seq >= $1", k)
            at = dt.datetime.now(dt.UTC)
            h = chain.record_hash(prev, chain.content(k, at, "revoke", None, "clerk-9", b"\x42", "forged", "{}"))
            rid = await conn.fetchval(
                "INSERT INTO audit_log (seq, at, action, operator_id, serial, request_id, details, prev_hash, hash)"
                " VALUES ($1, $2, 'revoke', 'clerk-9', '\\x42', 'forged', '{}', $3, $4) RETURNING id", k, at, prev, h)
            await conn.execute("UPDATE audit_head SET seq = seq + 1")
            await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_chain")
            await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_chain_head")
    finally:
        await conn.close()
    p = await _verify(copy)
    assert isinstance(p, chain.Problem) and (p.kind, p.seq, p.id) == ("inserted", k, rid), p


async def test_a_forged_checkpoint_signature_fails(copy):
    conn = await copy.owner()
    try:
        seq, sig = await conn.fetchrow("SELECT seq, signature FROM audit_checkpoint ORDER BY seq LIMIT 1")
        await conn.execute("UPDATE audit_checkpoint SET signature = $2 WHERE seq = $1", seq,
                           bytes([sig[0] ^ 0x01]) + sig[1:])
    finally:
        await conn.close()
    p = await _verify(copy)
    assert isinstance(p, chain.Problem) and p.kind == "checkpoint" and "signature" in p.message, p
    assert f"seq {seq}" in p.message


async def test_a_rewritten_history_fails_at_its_checkpoint(copy):
    """Someone with the owner's rights but not the token rewrites a record and every hash after it
    consistently (and the head): only the signed checkpoint tells."""
    conn = await copy.owner()
    try:
        async with conn.transaction():
            cp = await conn.fetchval("SELECT min(seq) FROM audit_checkpoint")
            await conn.execute("UPDATE audit_log SET details = '{\"forged\": true}' WHERE seq = 5")
            rows = await conn.fetch("SELECT id, seq, at, action, client_id, operator_id, serial, request_id,"
                                    " details::text, prev_hash, hash FROM audit_log WHERE seq >= 5 ORDER BY seq")
            prev = await conn.fetchval("SELECT hash FROM audit_log WHERE seq = 4")
            for r in rows:
                h = chain.record_hash(prev, chain.content(*list(r)[1:9]))
                await conn.execute("UPDATE audit_log SET prev_hash = $2, hash = $3 WHERE id = $1", r["id"], prev, h)
                prev = h
            await conn.execute("UPDATE audit_head SET hash = $1", prev)
    finally:
        await conn.close()
    p = await _verify(copy)
    assert isinstance(p, chain.Problem) and p.kind == "checkpoint" and f"seq {cp}" in p.message, p


# -- the CLI --------------------------------------------------------------------------------------

async def _cli(env, *args):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shomei.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_cli_verify(copy, stack_env):
    env = dict(stack_env, DATABASE_URL=copy.service_url, DATABASE_OWNER_URL=copy.owner_url)
    rc, out, err = await _cli(env, "audit", "verify")
    assert rc == 0, (out, err)
    assert "audit trail intact" in out and "1 signed checkpoints verified" in out
    conn = await copy.owner()
    try:
        rid = await conn.fetchval("UPDATE audit_log SET action = 'hold' WHERE seq = 3 RETURNING id")
    finally:
        await conn.close()
    rc, out, err = await _cli(env, "audit", "verify")
    assert rc == 1, (out, err)
    assert f"NOT intact: record seq 3 (id {rid}) was changed" in out


# -- checkpoints -----------------------------------------------------------------------------------

async def test_one_checkpoint_per_head_among_concurrent_signers(copy):
    async with copy.rt.pool.acquire() as conn:
        await audit.record(conn, action="test_checkpoint")
    results = await asyncio.gather(*(audit_ops.checkpoint(copy.rt) for _ in range(6)))
    signed = [r for r in results if r is not None]
    assert len(signed) == 1
    async with copy.rt.pool.acquire() as conn:
        head_seq, _h = await audit.head(conn)
        assert await audit.last_checkpoint_seq(conn) == head_seq


class _FlakySigner:
    """The session's token, failing its first signatures (a token briefly unavailable)."""

    def __init__(self, signer, failures: int):
        self._signer, self.failures = signer, failures

    async def sign(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise HSMError("the token failed to sign (test)")
        return await self._signer.sign(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._signer, name)


async def test_checkpoint_loop_survives_errors_and_signs(copy):
    flaky = _FlakySigner(copy.rt.signer, failures=2)
    rt = dataclasses.replace(copy.rt, signer=flaky)
    async with rt.pool.acquire() as conn:
        await audit.record(conn, action="test_loop")
        head_seq, _h = await audit.head(conn)
    task = asyncio.create_task(audit_ops.checkpoint_loop(rt, every_seconds=0.05))
    try:
        for _ in range(200):
            async with rt.pool.acquire() as conn:
                if await audit.last_checkpoint_seq(conn) == head_seq:
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("no checkpoint of the head")
        assert flaky.failures == 0 and not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    result = await _verify(copy)
    assert isinstance(result, chain.Summary) and result.after_last_checkpoint == 0, result


async def test_the_audit_key_is_in_the_token(rt):
    assert await rt.signer.public_key(AUDIT_KEY_LABEL) is not None


# -- the content format: the database and the host agree ----------------------------------------

EDGES = [
    # operator_id, request_id, serial, details, action
    (None, None, None, {}, "a"),
    ("", "", b"", {"": ""}, "a"),
    ("-", "0:", b"\x00", {"k": "-"}, "multi\nline"),
    ("x\x1fy", "1:x\x1f1:y", b"\x00\x00\xff", {"sep": "\x1f", "nl": "\n\t", "q": "\"\\"}, "\x1f"),
    ("山田　太郎", "申請-１", secrets.token_bytes(20), {"名前": "山田　太郎", "emoji": "🎌", "n": 1.50}, "発行"),
    (None, "r", None, {"nested": {"b": [1, 2, {"c": None}], "a": True}, "big": 10**30}, "a"),
]


async def test_python_content_matches_the_trigger(copy):
    async with copy.rt.pool.acquire() as conn, conn.transaction():
        for operator_id, request_id, serial, details, action in EDGES:
            await audit.record(conn, action=action, operator_id=operator_id, request_id=request_id,
                               serial=serial, details=details)
    async with copy.rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, seq, at, action, client_id, operator_id, serial, request_id,"
                                " details::text, prev_hash, hash FROM audit_log ORDER BY seq DESC LIMIT $1", len(EDGES))
    for r in rows:
        assert chain.record_hash(r["prev_hash"], chain.content(*list(r)[1:9])) == r["hash"], dict(r)


@pytest.mark.parametrize("at", [
    dt.datetime(2026, 11, 22, 3, 0, 0, tzinfo=dt.UTC),
    dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=14))),
    dt.datetime(99, 3, 4, 5, 6, 7, 1, tzinfo=dt.UTC),
])
@pytest.mark.parametrize("client_id", [None, 0, 7, -2147483648])
async def test_python_content_matches_the_sql_function(rt, at, client_id):
    async with rt.pool.acquire() as conn:
        for operator_id, request_id, serial, details, action in EDGES:
            sql = await conn.fetchval("SELECT audit_content($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
                                      2**62, at, action, client_id, operator_id, serial, request_id, details)
            details_text = await conn.fetchval("SELECT $1::jsonb::text", details)
            assert sql == chain.content(2**62, at, action, client_id, operator_id, serial, request_id, details_text)
