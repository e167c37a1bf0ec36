"""The Signer interface every component signs through."""
from __future__ import annotations

from typing import Protocol

from ca_core.algorithms import SignatureAlgorithm


# Priorities of the token's work: issuance, CRL and ceremony signatures (URGENT) go before answers signed
# on demand for OCSP (DEFERRABLE), which must not starve them.
URGENT, DEFERRABLE = 0, 1


class Signer(Protocol):
    async def sign_digest(self, key_label: str, alg: SignatureAlgorithm, digest: bytes, *,
                          priority: int = URGENT) -> bytes:
        """Sign a SHA-256 digest with the named private key; returns the X.509 signature value.
        Raises ca_core.errors.HSMError when the token fails."""

    async def sign(self, key_label: str, alg: SignatureAlgorithm, tbs_der: bytes, *, priority: int = URGENT) -> bytes:
        """Hash ``tbs_der`` on the host and sign the digest."""

    async def generate_keypair(self, key_label: str, key_type: str) -> bytes:
        """Create a non-extractable key pair in the token; returns the public key as SPKI DER."""

    async def public_key(self, key_label: str) -> bytes | None:
        """SPKI DER of the named key pair, or None when the token has no such key."""

    async def ping(self) -> None:
        """Raise HSMError unless the token answers."""

    async def close(self) -> None:
        """Release the session (idempotent)."""
