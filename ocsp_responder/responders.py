"""Delegated OCSP responder certificates (RFC 6960 4.2.2.2): one key and a short-lived certificate per
CA generation, renewed before they expire by whichever process gets the ceremony lock first."""
from __future__ import annotations

import datetime as dt

from ca_core.ca import IssuerSet
from ca_core.clock import Clock
from ca_core.config import CAs
from hsm import ceremony
from hsm.signer import Signer
from storage import cas


async def renew_due(conn, signer: Signer, issuers: IssuerSet, cas_cfg: CAs, now: dt.datetime) -> list[str]:
    """In the caller's transaction (ceremony lock held): a fresh responder certificate for each unexpired
    generation whose responder is missing or within ``responder_renew_days`` of expiry."""
    done = []
    latest = await cas.latest_responders(conn)
    for issuer in issuers:
        if issuer.not_after <= now:
            continue
        ca_cfg = cas_cfg.get(issuer.ca_id)
        current = latest.get(issuer.db_id)
        if current and current.not_after - now > dt.timedelta(days=ca_cfg.responder_renew_days):
            continue
        made = await ceremony.create_responder(signer, issuer, ca_cfg, now)
        await cas.insert_responder(conn, ca_generation_id=issuer.db_id, key_label=made.key_label,
                                   certificate=made.certificate_der, not_before=made.not_before,
                                   not_after=made.not_after)
        done.append(f"issued OCSP responder certificate for {issuer.ca_id} g{issuer.generation}")
    return done


async def renew_responders(pool, signer: Signer, clock: Clock, issuers: IssuerSet, cas_cfg: CAs) -> list[str]:
    """Renew responder certificates that are missing or close to expiry (the responders' maintenance)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await cas.lock_ceremony(conn)
            return await renew_due(conn, signer, issuers, cas_cfg, clock.now())
