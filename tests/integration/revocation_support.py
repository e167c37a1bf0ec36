"""Helpers of the revocation tests: issue a resident's certificates keeping their keys, read state."""
from __future__ import annotations

import secrets

from cryptography import x509

from ca_core.resident import resident_hash
from revocation import online_client
from tests.helpers import csr_pem, issue, issue_body, resident_code


class Holder:
    """A resident with certificates issued through the API, and the card's keys."""

    def __init__(self, code, certs, keys):
        self.code = code
        self.certs = certs  # kind -> cryptography Certificate
        self.keys = keys  # kind -> private key

    def serial(self, kind: str) -> int:
        return self.certs[kind].serial_number

    def hex(self, kind: str) -> str:
        return format(self.serial(kind), "x")

    def der(self, kind: str) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding
        return self.certs[kind].public_bytes(Encoding.DER)

    def application(self, kind: str, procedure: str, **kw) -> bytes:
        return online_client.build(procedure, self.der(kind), online_client.key_signer(self.keys[kind]),
                                   APPLICANT, **kw)


APPLICANT = {"name": "山田　花子", "address": "東京都千代田区千代田１番１号", "birth_date": "319850412", "sex": "2"}


async def new_holder(http, terminal, keypool, kinds=("signing", "auth")) -> Holder:
    code = resident_code()
    keys = {k: keypool.new() for k in kinds}
    body = issue_body(keypool, kinds=(), code=code)
    for k in kinds:
        body[f"{k}_csr"] = csr_pem(keys[k])
    data = await issue(http, terminal, body)
    certs = {c["kind"]: x509.load_pem_x509_certificate(c["certificate"].encode()) for c in data["certificates"]}
    return Holder(code, certs, keys)


def rid() -> str:
    return "rv-" + secrets.token_hex(8)


async def post(http, path, credential, body, operator=None):
    resp = await http.post(path, json=body, **credential.auth(operator))
    return resp.status, await resp.json()


async def status_of(rt, serial: int) -> str:
    async with rt.pool.acquire() as conn:
        return await conn.fetchval("SELECT status FROM certificate WHERE serial = $1", serial.to_bytes(16, "big"))


async def rows_of(rt, serial: int):
    async with rt.pool.acquire() as conn:
        return await conn.fetch("SELECT * FROM revocation WHERE serial = $1 ORDER BY id", serial.to_bytes(16, "big"))


async def in_force(rt, serial: int):
    """The revocation/hold row OCSP and CRLs treat as in force (effective, not released)."""
    async with rt.pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM revocation WHERE serial = $1 AND effective_at IS NOT NULL"
                                   " AND released_at IS NULL", serial.to_bytes(16, "big"))


def rhash(rt, code: str) -> bytes:
    return resident_hash(rt.resident_key, code)


async def synthetic_residents(rt, n: int, kinds=("signing", "auth")) -> dict[str, dict[str, int]]:
    """``n`` residents with certificate rows inserted directly (no signature: for volume tests of the
    feed, where only the rows matter). Returns resident code -> kind -> serial."""
    import datetime as dt

    from ca_core.serials import new_serial
    from storage import certificates

    now = rt.clock.now()
    out, records = {}, []
    async with rt.pool.acquire() as conn:
        ids = await certificates.allocate_ids(conn, n * len(kinds))
        it = iter(ids)
        for _ in range(n):
            code = "".join(secrets.choice("0123456789") for _ in range(11))
            out[code] = {}
            for kind in kinds:
                cid, serial = next(it), new_serial()
                out[code][kind] = serial
                records.append((cid, rt.issuers.current(kind).db_id, serial.to_bytes(16, "big"), kind,
                                rhash(rt, code), "131016", cid // rt.cfg.issuance.partition_size,
                                now - dt.timedelta(days=1), now + dt.timedelta(days=3650), b"\x30\x00"))
        await conn.copy_records_to_table(
            "certificate", records=records,
            columns=["id", "ca_generation_id", "serial", "kind", "resident_hash", "municipality_code", "partition",
                     "not_before", "not_after", "der"])
    return out
