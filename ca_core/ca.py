"""A CA key generation as the rest of the domain sees it (the issuer of certificates, CRLs, OCSP)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from asn1crypto import x509 as ax509

from .algorithms import SignatureAlgorithm


@dataclass(frozen=True)
class Issuer:
    """One generation of one CA: its certificate and the label of its key in the token."""

    db_id: int
    ca_id: str  # "signing" | "auth"
    generation: int
    key_label: str
    algorithm: SignatureAlgorithm
    certificate_der: bytes

    @cached_property
    def certificate(self) -> ax509.Certificate:
        return ax509.Certificate.load(self.certificate_der)

    @cached_property
    def name(self) -> ax509.Name:
        return self.certificate["tbs_certificate"]["subject"]

    @cached_property
    def name_der(self) -> bytes:
        return self.name.dump()

    @cached_property
    def key_id(self) -> bytes:
        """subjectKeyIdentifier of the CA certificate (RFC 5280 4.2.1.2 method 1)."""
        return key_identifier(self.certificate["tbs_certificate"]["subject_public_key_info"])

    @cached_property
    def fingerprint_sha256(self) -> str:
        return hashlib.sha256(self.certificate_der).hexdigest()

    @cached_property
    def name_hash_sha1(self) -> bytes:
        """issuerNameHash for OCSP CertID (RFC 6960 4.1.1)."""
        return hashlib.sha1(self.name_der).digest()

    @property
    def key_hash_sha1(self) -> bytes:
        """issuerKeyHash for OCSP CertID: SHA-1 of the subjectPublicKey BIT STRING value."""
        return self.key_id

    @cached_property
    def not_after(self):
        return self.certificate["tbs_certificate"]["validity"]["not_after"].native


def key_identifier(spki: ax509.PublicKeyInfo) -> bytes:
    """SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 section 4.2.1.2, method 1)."""
    return hashlib.sha1(spki["public_key"].contents[1:]).digest()


class IssuerSet:
    """All CA generations, looked up by database id, by CA and generation, or by key hash."""

    def __init__(self, records):
        self._by_id: dict[int, Issuer] = {}
        self._current: dict[str, Issuer] = {}
        self._by_key: dict[bytes, Issuer] = {}
        for rec in records:
            issuer = rec.issuer
            self._by_id[issuer.db_id] = issuer
            self._by_key[issuer.key_id] = issuer
            if rec.is_current:
                self._current[issuer.ca_id] = issuer

    def __iter__(self):
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def current(self, ca_id: str) -> Issuer | None:
        return self._current.get(ca_id)

    def by_id(self, db_id: int) -> Issuer | None:
        return self._by_id.get(db_id)

    def by_key_id(self, key_id: bytes) -> Issuer | None:
        return self._by_key.get(key_id)

    def generations(self, ca_id: str) -> list[Issuer]:
        return sorted((i for i in self._by_id.values() if i.ca_id == ca_id), key=lambda i: i.generation)


class IssuerSource(Protocol):
    """Where a service reads the CA generations of the moment (a rollover changes them)."""

    issuers: IssuerSet

    async def reload_on_miss(self) -> bool:
        """Read the generations again after asking for one nobody knew (rate-limited); True if it did."""


class FixedIssuers:
    """An IssuerSource that never changes (tools and tests)."""

    def __init__(self, issuers: IssuerSet):
        self.issuers = issuers

    async def reload_on_miss(self) -> bool:
        return False
