"""Operator procedures that touch both the token and the database: the key ceremony, responder
renewal, CA key rollover, client registration."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from ca_core.ca import key_identifier
from ca_core.config import CA_IDS
from hsm import ceremony
from storage import cas, clients as client_store
from shomei.embedded import write_secret
from shomei.runtime import Runtime

log = logging.getLogger(__name__)

_CEREMONY_LOCK = 0x5348_4F4D_4549_0001  # one ceremony at a time across processes


def _spki_of(cert_der: bytes):
    from asn1crypto import x509 as ax509
    return ax509.Certificate.load(cert_der)["tbs_certificate"]["subject_public_key_info"]


async def run_ceremony(rt: Runtime) -> list[str]:
    """Create what is missing: each CA's first generation, and a fresh responder certificate for each
    generation whose responder is missing or due for renewal. Idempotent; returns what it did."""
    done: list[str] = []
    now = rt.clock.now()
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CEREMONY_LOCK)
            records = await cas.list_generations(conn)
            for ca_id in CA_IDS:
                if any(r.is_current and r.issuer.ca_id == ca_id for r in records):
                    continue
                generation = 1 + max((r.issuer.generation for r in records if r.issuer.ca_id == ca_id), default=0)
                await _new_generation(rt, conn, ca_id, generation, now)
                done.append(f"created CA {ca_id} generation {generation}")
            await rt_reload(rt, conn)
            done += await _renew_responders(rt, conn, now)
    return done


async def rt_reload(rt: Runtime, conn) -> None:
    from ca_core.ca import IssuerSet
    rt.issuers = IssuerSet(await cas.list_generations(conn))


async def _new_generation(rt: Runtime, conn, ca_id: str, generation: int, now: dt.datetime) -> None:
    ca_cfg = rt.cfg.ca.get(ca_id)
    made = await ceremony.create_root(rt.signer, ca_id, generation, ca_cfg, now)
    import hashlib
    await cas.insert_generation(
        conn, ca_id=ca_id, generation=generation, key_label=made.key_label, key_type=ca_cfg.key_type,
        key_id=key_identifier(_spki_of(made.certificate_der)), certificate=made.certificate_der,
        fingerprint=hashlib.sha256(made.certificate_der).hexdigest(), not_before=made.not_before,
        not_after=made.not_after, make_current=True)
    log.info("CA %s generation %d created (key %s)", ca_id, generation, made.key_label)


async def _renew_responders(rt: Runtime, conn, now: dt.datetime) -> list[str]:
    done = []
    latest = await cas.latest_responders(conn)
    for issuer in rt.issuers:
        if issuer.not_after <= now:
            continue
        ca_cfg = rt.cfg.ca.get(issuer.ca_id)
        current = latest.get(issuer.db_id)
        if current and current.not_after - now > dt.timedelta(days=ca_cfg.responder_renew_days):
            continue
        made = await ceremony.create_responder(rt.signer, issuer, ca_cfg, now)
        await cas.insert_responder(conn, ca_generation_id=issuer.db_id, key_label=made.key_label,
                                   certificate=made.certificate_der, not_before=made.not_before,
                                   not_after=made.not_after)
        done.append(f"issued OCSP responder certificate for {issuer.ca_id} g{issuer.generation}")
    return done


async def renew_responders(rt: Runtime) -> list[str]:
    """Renew responder certificates that are missing or close to expiry (also run by the scheduler)."""
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CEREMONY_LOCK)
            return await _renew_responders(rt, conn, rt.clock.now())


async def rollover(rt: Runtime, ca_id: str) -> str:
    """CA key rollover: a new generation with the same name and a new key becomes current; the old
    generation keeps publishing CRLs and answering OCSP for what it issued."""
    now = rt.clock.now()
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CEREMONY_LOCK)
            records = await cas.list_generations(conn)
            generation = 1 + max((r.issuer.generation for r in records if r.issuer.ca_id == ca_id), default=0)
            await _new_generation(rt, conn, ca_id, generation, now)
            await rt_reload(rt, conn)
            await _renew_responders(rt, conn, now)
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
