"""A Signer with its keys in process memory (pyca/cryptography), behind the same protocol as the
PKCS#11 token: for unit tests of the services and for tools that need no HSM. Never used by `serve`.

It signs exactly what the token would (a SHA-256 digest: PKCS#1 v1.5 over the DigestInfo for RSA,
ECDSA over the hash), so objects it signs verify like the token's."""
from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ca_core.algorithms import SignatureAlgorithm
from ca_core.errors import HSMError


class SoftwareSigner:
    def __init__(self):
        self._keys: dict[str, object] = {}
        self.signatures = 0  # how many signatures were made (tests count token use)
        self.fail_next = False  # make the next signature fail like a token error (fault injection)

    async def open(self) -> None:
        """Nothing to open (the protocol's start-up step)."""

    async def close(self) -> None:
        self._keys.clear()

    def add_key(self, key_label: str, private_key) -> None:
        """Put an existing private key under a label (keys made elsewhere, e.g. by a test)."""
        self._keys[key_label] = private_key

    async def generate_keypair(self, key_label: str, key_type: str) -> bytes:
        if key_type.startswith("rsa"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
        elif key_type == "ec-p256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise HSMError(f"unsupported key type {key_type}")
        self._keys[key_label] = key
        return await self.public_key(key_label)

    async def public_key(self, key_label: str) -> bytes | None:
        key = self._keys.get(key_label)
        if key is None:
            return None
        return key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)

    async def sign_digest(self, key_label: str, alg: SignatureAlgorithm, digest: bytes, *, priority: int = 0) -> bytes:
        key = self._keys.get(key_label)
        if key is None:
            raise HSMError(f"no private key labelled {key_label!r}")
        if self.fail_next:
            self.fail_next = False
            raise HSMError("the token failed to sign (injected)")
        self.signatures += 1
        prehashed = utils.Prehashed(hashes.SHA256())
        if alg.is_rsa:
            return key.sign(digest, padding.PKCS1v15(), prehashed)
        return key.sign(digest, ec.ECDSA(prehashed))  # already a DER ECDSA-Sig-Value

    async def sign(self, key_label: str, alg: SignatureAlgorithm, tbs_der: bytes, *, priority: int = 0) -> bytes:
        h = alg.new_hash()
        h.update(tbs_der)
        return await self.sign_digest(key_label, alg, h.digest(), priority=priority)

    async def ping(self) -> None:
        """Always answers."""
