"""Who may act on which certificate: a terminal on those issued in its municipality or of residents who
have since moved in (as the resident-register feed reported); the call centre (kind national) may place
holds anywhere and do nothing else. The rule is ca_core.lifecycle.check_scope; this reads where the
holders live."""
from __future__ import annotations

from ca_core import lifecycle
from ca_core.records import CertificateRecord
from storage import residences


async def check_scope(conn, client, action: str, certs: list[CertificateRecord]) -> None:
    """Every certificate within the client's authority; raises Forbidden (the caller's transaction then
    changes nothing)."""
    lives = await residences.of(conn, {c.resident_hash for c in certs})
    for cert in certs:
        lifecycle.check_scope(client_kind=client.kind, client_municipality=client.municipality_code,
                              action=action, issued_in=cert.municipality_code, lives_in=lives.get(cert.resident_hash))
