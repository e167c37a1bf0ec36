"""Key ceremony steps in the token: CA key pairs with self-signed certificates, and delegated OCSP
responder keys with certificates issued by their CA. Each step is idempotent on the key label: a key
left by an interrupted ceremony is reused, never duplicated."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ca_core.algorithms import SignatureAlgorithm, algorithm_for
from ca_core.ca import Issuer
from ca_core.config import CAConfig
from ca_core.names import build_name
from ca_core.profiles import assemble_certificate, link_tbs, responder_tbs, root_tbs
from ca_core.serials import new_serial

from .signer import Signer


@dataclass(frozen=True)
class MadeCertificate:
    key_label: str
    certificate_der: bytes
    not_before: dt.datetime
    not_after: dt.datetime


def ca_key_label(ca_id: str, generation: int) -> str:
    return f"shomei-{ca_id}-g{generation}"


def responder_key_label(ca_id: str, generation: int, now: dt.datetime) -> str:
    return f"shomei-{ca_id}-g{generation}-ocsp-{now:%Y%m%dT%H%M%S}"


async def _key(signer: Signer, label: str, key_type: str) -> bytes:
    spki = await signer.public_key(label)
    if spki is None:
        spki = await signer.generate_keypair(label, key_type)
    return spki


# The audit key signs the checkpoints of the audit trail's hash chain (shomei/audit.py); `shomei audit
# verify` checks them with its public key as the token holds it.
AUDIT_KEY_LABEL = "shomei-audit"
AUDIT_KEY_TYPE = "rsa2048"


async def ensure_audit_key(signer: Signer) -> bool:
    """The audit key pair in the token, created when missing; True when it was created now."""
    missing = await signer.public_key(AUDIT_KEY_LABEL) is None
    await _key(signer, AUDIT_KEY_LABEL, AUDIT_KEY_TYPE)
    return missing


async def create_root(signer: Signer, ca_id: str, generation: int, ca: CAConfig,
                      now: dt.datetime) -> MadeCertificate:
    """Key pair and self-signed certificate of one CA generation."""
    return await create_self_signed(signer, ca_key_label(ca_id, generation), ca.subject, ca.key_type,
                                    ca.root_validity_days, now)


async def create_self_signed(signer: Signer, label: str, subject, key_type: str, days: int,
                             now: dt.datetime) -> MadeCertificate:
    """Key pair ``label`` in the token and a self-signed CA certificate of ``subject`` (name pairs)."""
    alg = algorithm_for(key_type)
    spki = await _key(signer, label, key_type)
    not_after = now + dt.timedelta(days=days)
    tbs = root_tbs(ca_name=build_name(subject), spki_der=spki, alg=alg, serial=new_serial(),
                   not_before=now, not_after=not_after)
    tbs_der = tbs.dump()
    sig = await signer.sign(label, alg, tbs_der)
    return MadeCertificate(label, assemble_certificate(tbs_der, alg, sig), now, not_after)


async def create_links(signer: Signer, old: Issuer, new: Issuer, now: dt.datetime) -> tuple[bytes, bytes]:
    """The two link certificates of a rollover: (new key certified by the old one, old key certified by
    the new one), valid from now to the end of the shorter-lived of the two generations."""
    not_after = min(old.not_after, new.not_after)
    made = []
    for signing, certified in ((old, new), (new, old)):
        spki = certified.certificate["tbs_certificate"]["subject_public_key_info"].dump()
        tbs = link_tbs(signing, subject_spki_der=spki, serial=new_serial(), not_before=now, not_after=not_after).dump()
        made.append(assemble_certificate(tbs, signing.algorithm, await signer.sign(signing.key_label, signing.algorithm, tbs)))
    return made[0], made[1]


async def create_responder(signer: Signer, issuer: Issuer, ca: CAConfig, now: dt.datetime) -> MadeCertificate:
    """Delegated OCSP responder key (same type as the CA's) and its short-lived certificate."""
    label = responder_key_label(issuer.ca_id, issuer.generation, now)
    spki = await _key(signer, label, ca.key_type)
    not_after = min(now + dt.timedelta(days=ca.responder_validity_days), issuer.not_after)
    tbs = responder_tbs(issuer, spki_der=spki, serial=new_serial(), not_before=now, not_after=not_after)
    tbs_der = tbs.dump()
    sig = await signer.sign(issuer.key_label, issuer.algorithm, tbs_der)
    return MadeCertificate(label, assemble_certificate(tbs_der, issuer.algorithm, sig), now, not_after)


__all__ = ["MadeCertificate", "create_root", "create_self_signed", "create_links", "create_responder", "ca_key_label", "SignatureAlgorithm"]
