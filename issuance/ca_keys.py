"""CA key generations: the first generation of each CA at the key ceremony, and a new generation at a
key rollover (same name, new key; the old generation keeps its CRLs and OCSP for what it issued).

Runs inside the caller's transaction, which holds the ceremony lock (storage.cas.lock_ceremony)."""
from __future__ import annotations

import datetime as dt
import hashlib
import logging

from asn1crypto import x509 as ax509

from ca_core.ca import key_identifier
from ca_core.config import CAs
from ca_core.kinds import KINDS
from hsm import ceremony
from hsm.signer import Signer
from storage import cas

log = logging.getLogger(__name__)


async def new_generation(conn, signer: Signer, cas_cfg: CAs, ca_id: str, now: dt.datetime) -> int:
    """Create the next key generation of ``ca_id`` in the token and make it current; returns its number."""
    records = await cas.list_generations(conn)
    generation = 1 + max((r.issuer.generation for r in records if r.issuer.ca_id == ca_id), default=0)
    previous = next((r.issuer for r in records if r.is_current and r.issuer.ca_id == ca_id), None)
    ca_cfg = cas_cfg.get(ca_id)
    made = await ceremony.create_root(signer, ca_id, generation, ca_cfg, now)
    spki = ax509.Certificate.load(made.certificate_der)["tbs_certificate"]["subject_public_key_info"]
    new_id = await cas.insert_generation(
        conn, ca_id=ca_id, generation=generation, key_label=made.key_label, key_type=ca_cfg.key_type,
        key_id=key_identifier(spki), certificate=made.certificate_der,
        fingerprint=hashlib.sha256(made.certificate_der).hexdigest(), not_before=made.not_before,
        not_after=made.not_after, make_current=True)
    if previous is not None:  # relying parties trusting either root can validate the other's certificates
        new = next(r.issuer for r in await cas.list_generations(conn) if r.issuer.db_id == new_id)
        new_with_old, old_with_new = await ceremony.create_links(signer, previous, new, now)
        for direction, der in (("new_with_old", new_with_old), ("old_with_new", old_with_new)):
            await cas.insert_link(conn, new_generation_id=new_id, old_generation_id=previous.db_id,
                                  direction=direction, certificate=der)
    log.info("CA %s generation %d created (key %s)", ca_id, generation, made.key_label)
    return generation


async def ensure_generations(conn, signer: Signer, cas_cfg: CAs, now: dt.datetime) -> list[str]:
    """Give every CA without a current generation its first (or next) one; returns what was done."""
    records = await cas.list_generations(conn)
    done = []
    for ca_id in KINDS:
        if not any(r.is_current and r.issuer.ca_id == ca_id for r in records):
            generation = await new_generation(conn, signer, cas_cfg, ca_id, now)
            done.append(f"created CA {ca_id} generation {generation}")
    return done
