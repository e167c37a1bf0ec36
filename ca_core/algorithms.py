"""Signature algorithms of CA keys and the host-side half of HSM signing.

With keys in an HSM, the host encodes and hashes the TBS structure and the token signs only the digest
(docs/architecture.md, facts that shaped the design). RSA keys sign a PKCS#1 v1.5 DigestInfo
(CKM_RSA_PKCS); ECDSA keys sign the hash and return r||s, which X.509 wants as a DER ECDSA-Sig-Value (RFC 5758 section 3.2).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from asn1crypto import algos, core

from .errors import ConfigError

# DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


@dataclass(frozen=True)
class SignatureAlgorithm:
    """How a key of one type signs X.509 objects."""

    key_type: str  # rsa2048 | rsa3072 | rsa4096 | ec-p256

    @property
    def is_rsa(self) -> bool:
        return self.key_type.startswith("rsa")

    @property
    def rsa_bits(self) -> int:
        return int(self.key_type[3:])

    @property
    def oid_name(self) -> str:
        return "sha256_rsa" if self.is_rsa else "sha256_ecdsa"

    def identifier(self) -> algos.SignedDigestAlgorithm:
        """AlgorithmIdentifier; NULL parameters for RSA (RFC 4055 section 5), absent for ECDSA (RFC 5758)."""
        if self.is_rsa:
            return algos.SignedDigestAlgorithm({"algorithm": "sha256_rsa", "parameters": core.Null()})
        return algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})

    @cached_property
    def identifier_der(self) -> bytes:
        """The AlgorithmIdentifier DER, encoded once (it is in every certificate, CRL and answer)."""
        return self.identifier().dump()

    @staticmethod
    def new_hash():
        return hashlib.sha256()

    def token_input(self, digest: bytes) -> bytes:
        """What the token signs for this digest: a DigestInfo for RSA, the bare hash for ECDSA."""
        return _SHA256_DIGEST_INFO + digest if self.is_rsa else digest

    def encode_signature(self, raw: bytes) -> bytes:
        """The token's output as X.509 carries it in the signature BIT STRING."""
        if self.is_rsa:
            return raw
        half = len(raw) // 2
        return algos.DSASignature({
            "r": int.from_bytes(raw[:half], "big"),
            "s": int.from_bytes(raw[half:], "big"),
        }).dump()


def algorithm_for(key_type: str) -> SignatureAlgorithm:
    if key_type not in ("rsa2048", "rsa3072", "rsa4096", "ec-p256"):
        raise ConfigError(f"unsupported key type {key_type}")
    return SignatureAlgorithm(key_type)
