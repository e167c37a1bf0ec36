"""Operator procedures that span use cases: the key ceremony (CA generations, then their OCSP
responders), CA key rollover, and the embedded default's demo clients."""
from __future__ import annotations

import logging
from pathlib import Path

from ca_core.ca import IssuerSet
from issuance import ca_keys
from ocsp_responder import responders
from plumbing.runtime import Runtime
from shomei.embedded import write_secret
from storage import cas, clients as client_store

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
    await rt.reload_issuers()
    return f"CA {ca_id} generation {generation} is now current"


async def ensure_demo_client(rt: Runtime, *, kind: str, name: str, token_file: Path,
                             municipality_code: str | None = None) -> str:
    """Register a demo client once and keep its credential in ``token_file`` (0600)."""
    async with rt.pool.acquire() as conn:
        client = await client_store.find_by_name(conn, name)
        if client and token_file.exists():
            return token_file.read_text().strip()
        if client:
            token = await client_store.rotate_token(conn, client.id)
        else:
            _client, token = await client_store.register(conn, kind=kind, name=name,
                                                         municipality_code=municipality_code)
    write_secret(token_file, token + "\n")
    return token
