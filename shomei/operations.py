"""Operator procedures that span use cases: the key ceremony (CA generations, then their OCSP
responders), and CA key rollover."""
from __future__ import annotations

import datetime as dt
import logging

from ca_core import expiry
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


async def generation_plans(rt: Runtime) -> list[expiry.GenerationPlan]:
    """Every CA generation's expiry plan (rollover due, its newest responder certificate's end)."""
    async with rt.pool.acquire() as conn:
        records = await cas.list_generations(conn)
        responders_by_generation = await cas.latest_responders(conn)
    return [expiry.plan(r.issuer.ca_id, r.issuer.generation, r.is_current, r.issuer.not_after,
                        getattr(responders_by_generation.get(r.issuer.db_id), "not_after", None))
            for r in records]


def rollover_plan(plans: list[expiry.GenerationPlan], ca_id: str, cfg, now) -> list[str]:
    """What `shomei ca rollover --plan` prints: what would be made, when the current generation's rollover
    is due, and when the generation it replaces would retire. Nothing is written."""
    current = next((p for p in plans if p.ca_id == ca_id and p.current), None)
    generation = 1 + max((p.generation for p in plans if p.ca_id == ca_id), default=0)
    ca = cfg.ca.get(ca_id)
    lines = [f"would create: CA {ca_id} generation {generation}, key {ceremony.ca_key_label(ca_id, generation)} "
             f"({ca.key_type}) in the token, its self-signed certificate valid {ca.root_validity_days} days "
             f"(until about {now + dt.timedelta(days=ca.root_validity_days):%Y-%m-%d}), its OCSP responder"]
    if current is None:
        return lines + ["no current generation: this is the CA's first (the ceremony makes it)"]
    lines.append(f"and the link certificates g{current.generation} <-> g{generation} (new-with-old, old-with-new)")
    due = current.rollover_due
    lines.append(f"current generation g{current.generation}: ends {current.not_after:%Y-%m-%d}; rollover due "
                 f"{due:%Y-%m-%d} ({(due - now).days} days from now), when its remaining life becomes shorter than "
                 f"the longest certificate ({expiry.LONGEST_END_ENTITY.days} days)")
    lines.append(f"if rolled over now, g{current.generation} keeps its CRLs and OCSP and retires on "
                 f"{expiry.retires_at(current.not_after, now):%Y-%m-%d}, when its last certificate has expired")
    return lines
