"""The audit trail's signed checkpoints and its verification (they need both the token's audit key and
the database, so they live in the shell).

The database chains every audit record as it is inserted (migration 0009). A checkpoint signs the
head of the chain (seq, hash) with the audit key in the token, so that whoever can write the database
but not use the token cannot rewrite the history up to it unnoticed. `shomei audit verify` recomputes
the whole chain on the host (ca_core.audit) and checks every checkpoint with the token's public key.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ca_core import audit as chain
from ca_core.algorithms import algorithm_for
from ca_core.errors import ShomeiError
from hsm.ceremony import AUDIT_KEY_LABEL, AUDIT_KEY_TYPE
from plumbing.runtime import Runtime
from storage import audit as audit_store

log = logging.getLogger(__name__)


async def checkpoint(rt: Runtime) -> int | None:
    """Sign the head of the chain if it moved since the last checkpoint; returns the seq signed, or None
    (nothing new, or another process or host is signing one now: a transaction-level advisory lock)."""
    async with rt.pool.acquire() as conn, conn.transaction():
        if not await audit_store.try_checkpoint_lock(conn):
            return None
        seq, head_hash = await audit_store.head(conn)
        if seq <= await audit_store.last_checkpoint_seq(conn):
            return None
        signature = await rt.signer.sign(AUDIT_KEY_LABEL, algorithm_for(AUDIT_KEY_TYPE),
                                         chain.checkpoint_message(seq, head_hash))
        await audit_store.insert_checkpoint(conn, seq=seq, hash=head_hash, signed_at=rt.clock.now(),
                                            key_label=AUDIT_KEY_LABEL, signature=signature)
    log.debug("audit checkpoint at seq %d", seq)
    return seq


async def checkpoint_loop(rt: Runtime, every_seconds: float | None = None) -> None:
    """Sign a checkpoint every ``every_seconds`` (default security.audit_checkpoint_seconds) when the head
    moved, forever. Every process may run it: each checkpoint is signed once. Errors are logged, and the
    next round tries again; only cancellation ends it."""
    every = rt.cfg.security.audit_checkpoint_seconds if every_seconds is None else every_seconds
    if every <= 0:
        raise ValueError("the checkpoint interval must be positive")
    while True:
        try:
            await checkpoint(rt)
        except asyncio.CancelledError:
            raise
        except ShomeiError as exc:  # database or token unavailable, audit key missing, ...
            log.error("audit checkpoint failed: %s", exc.message)
        except Exception:
            log.exception("audit checkpoint failed")
        await asyncio.sleep(every)


Progress = Callable[[int, int], None]  # (records checked, total)


async def verify(rt: Runtime, progress: Progress | None = None, *,
                 batch: int = 10_000) -> chain.Problem | chain.Summary:
    """Recompute the audit chain from every record, in one snapshot, and check the head and every
    checkpoint (its hash against the chain's, its signature against the audit key read from the token).
    Returns the first problem, or a summary."""
    spki = await rt.signer.public_key(AUDIT_KEY_LABEL)
    keys = {AUDIT_KEY_LABEL: spki} if spki is not None else {}
    verifier = chain.ChainVerifier(keys.get)
    async with rt.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        total = await audit_store.count(conn)
        head_seq, head_hash = await audit_store.head(conn)
        if progress:
            progress(0, total)
        done, cp_seq, cp_more = 0, 0, True

        async def checkpoints_through(seq: int | None) -> None:
            """Hand the verifier the checkpoints up to ``seq`` (None: all), ahead of the records."""
            nonlocal cp_seq, cp_more
            while cp_more and (seq is None or cp_seq < seq):
                page = await audit_store.checkpoints_after(conn, cp_seq, batch)
                verifier.add_checkpoints(page)
                cp_more = len(page) == batch
                if page:
                    cp_seq = page[-1].seq

        ok = True
        async with contextlib.aclosing(audit_store.read_chain(conn, batch)) as batches:
            async for rows in batches:
                await checkpoints_through(rows[-1][1])
                ok = verifier.feed(rows)
                done += len(rows)
                if progress:
                    progress(done, total)
                if not ok:
                    break
        if ok:
            await checkpoints_through(None)
    return verifier.finish(head_seq, head_hash)
