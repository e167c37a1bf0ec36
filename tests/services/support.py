"""Helpers of the service-level tests: the shared parts, residents issued through IssuanceService with
their card keys, and reads of what the database recorded."""
from __future__ import annotations

import datetime as dt
import itertools
import secrets
from dataclasses import dataclass, field

from cryptography import x509

from ca_core.clock import JST, UTC
from ca_core.kinds import KINDS
from ca_core.resident import BasicFour
from tests.helpers import csr_pem, resident, resident_code

# The fixed time of every test (12:00 in Japan on 22 November 2026).
T0 = dt.datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)

OPERATOR = "clerk-svc"
APPLICANT = {"name": "山田　花子", "address": "東京都千代田区千代田１番１号", "birth_date": "319850412", "sex": "2"}

_request_ids = itertools.count(1)


class CardKeys:
    """A few RSA-2048 keys made once (KeyPool) and handed out in turn, never the same one twice in a row, so
    that a signing and an auth CSR of one request always have different keys."""

    SIZE = 6

    def __init__(self, pool):
        self._pool = pool
        self._keys: list = []
        self._turn = itertools.count()

    def next(self):
        if len(self._keys) < self.SIZE:
            self._keys.append(self._pool.new())
            return self._keys[-1]
        return self._keys[next(self._turn) % self.SIZE]


@dataclass
class Parts:
    cfg: object
    url: str
    pool: object
    signer: object
    issuers: object  # IssuerSet
    resident_key: bytes
    terminal: object  # storage.clients.Client
    feed: object
    card_keys: CardKeys

    def ca(self, kind: str) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.issuers.current(kind).certificate_der)


@dataclass
class Holder:
    """A resident with certificates issued by IssuanceService, and the card's keys."""

    code: str
    result: object  # IssueResult
    certs: dict = field(default_factory=dict)  # kind -> cryptography Certificate
    keys: dict = field(default_factory=dict)  # kind -> private key

    def serial(self, kind: str) -> int:
        return self.certs[kind].serial_number

    def der(self, kind: str) -> bytes:
        return next(c.der for c in self.result.certificates if c.kind == kind)


def request_id() -> str:
    return f"svc-{next(_request_ids)}-{secrets.token_hex(4)}"


def issue_request(keys: dict, *, code: str | None = None, request_id_: str | None = None,
                  card_expires_on: str | None = None, clock=None, **over):
    """An IssueRequest for the given card keys (kind -> key)."""
    from issuance.service import IssueRequest

    today = (clock.now() if clock else T0).astimezone(JST).date()
    data = dict(
        request_id=request_id_ or request_id(), municipality_code="131016", resident_code=code or resident_code(),
        resident=BasicFour(**resident()),
        card_expires_on=card_expires_on or (today + dt.timedelta(days=3650)).isoformat(),
        signing_csr=csr_pem(keys["signing"]) if "signing" in keys else None,
        auth_csr=csr_pem(keys["auth"]) if "auth" in keys else None)
    data.update(over)
    return IssueRequest(**data)


async def issue_holder(issuance, parts: Parts, kinds=KINDS, **kw) -> Holder:
    keys = {k: parts.card_keys.next() for k in kinds}
    req = issue_request(keys, clock=issuance.clock, **kw)
    result = await issuance.issue(parts.terminal, OPERATOR, req)
    certs = {c.kind: x509.load_der_x509_certificate(c.der) for c in result.certificates}
    return Holder(req.resident_code, result, certs, keys)


# -- reads -----------------------------------------------------------------------------------------

async def record(parts: Parts, serial: int):
    """The certificate row (storage.certificates.by_serial)."""
    from storage import certificates

    async with parts.pool.acquire() as conn:
        return await certificates.by_serial(conn, serial)


async def status(parts: Parts, serial: int) -> str:
    return (await record(parts, serial)).status


async def revocation_rows(parts: Parts, serial: int) -> list:
    async with parts.pool.acquire() as conn:
        return await conn.fetch("SELECT * FROM revocation WHERE serial = $1 ORDER BY id", serial.to_bytes(16, "big"))


async def totals(parts: Parts) -> dict[str, int]:
    """Row counts of the tables a use case writes (our database is ours alone: exact before/after)."""
    out = {}
    async with parts.pool.acquire() as conn:
        for table in ("certificate", "issuance", "audit_log", "revocation", "feed_event", "online_nonce",
                      "window_request", "free_reissue"):
            out[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return out
