"""Operator procedures that span use cases: the key ceremony (CA generations, then their OCSP
responders), and CA key rollover."""
from __future__ import annotations

import logging

from ca_core.ca import IssuerSet
from hsm import ceremony
from issuance import ca_keys
from ocsp_responder import responders
from plumbing.cli import command_user
from plumbing.runtime import Runtime
from storage import audit, cas

log = logging.getLogger(__name__)


async def run_ceremony(rt: Runtime) -> list[str]:
    """Create what is missing: each CA's first generation, and a fresh responder certificate for each
    generation whose responder is missing or due for renewal. Idempotent; returns what it did."""
    now = rt.clock.now()
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            await cas.lock_ceremony(conn)
            done = await ca_keys.ensure_generations(conn, rt.signer, rt.cfg.ca, now)
            issuers = IssuerSet(await cas.list_generations(conn))
            done += await responders.renew_due(conn, rt.signer, issuers, rt.cfg.ca, now)
            if await ceremony.ensure_audit_key(rt.signer):
                done.append(f"created the audit key {ceremony.AUDIT_KEY_LABEL}")
            if done:
                await audit.record(conn, action="ceremony", operator_id=command_user(), details={"done": done})
    await rt.reload_issuers()
    return done


async def rollover(rt: Runtime, ca_id: str) -> str:
    """CA key rollover: a new generation with the same name and a new key becomes current, with its
    responder; the old generation keeps publishing CRLs and answering OCSP for what it issued."""
    now = rt.clock.now()
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            await cas.lock_ceremony(conn)
            generation = await ca_keys.new_generation(conn, rt.signer, rt.cfg.ca, ca_id, now)
            issuers = IssuerSet(await cas.list_generations(conn))
            await responders.renew_due(conn, rt.signer, issuers, rt.cfg.ca, now)
            await audit.record(conn, action="ca_rollover", operator_id=command_user(),
                               details={"ca": ca_id, "generation": generation})
    await rt.reload_issuers()
    return f"CA {ca_id} generation {generation} is now current"
