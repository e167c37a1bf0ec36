"""The token thread serves issuance and CRL signatures before OCSP answers signed on demand: a burst of
OCSP misses queued ahead of an issuance signature does not delay it."""
from __future__ import annotations

import asyncio

from hsm.pkcs11_signer import MAX_HELD
from hsm.signer import DEFERRABLE, URGENT


async def test_urgent_signatures_overtake_queued_ocsp_ones(rt):
    issuer = rt.issuers.current("auth")
    done: list[str] = []

    async def sign(name: str, priority: int) -> None:
        await rt.signer.sign_digest(issuer.key_label, issuer.algorithm, b"\x07" * 32, priority=priority)
        done.append(name)

    ocsp = [asyncio.create_task(sign(f"ocsp-{i}", DEFERRABLE)) for i in range(100)]
    await asyncio.sleep(0)  # all 100 are queued on the token thread
    issuance = asyncio.create_task(sign("issuance", URGENT))
    await asyncio.gather(issuance, *ocsp)
    # next after the one or two already being signed; answers signed before it may be handed back to the
    # event loop in the same batch (at most MAX_HELD), just ahead of it
    assert done.index("issuance") <= 3 + MAX_HELD, done[:30]
    assert len(done) == 101
