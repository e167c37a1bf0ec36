"""A partition CRL is there from the moment a certificate names it, not only after the next tick."""
from __future__ import annotations

import datetime as dt
import secrets

from cryptography import x509

from ca_core.serials import new_serial


async def _certificate_in_partition(rt, partition: int) -> int:
    """A certificate row assigned to ``partition`` (only the row matters to the publisher)."""
    from storage import certificates

    now = rt.clock.now()
    serial = new_serial()
    async with rt.pool.acquire() as conn:
        [cid] = await certificates.allocate_ids(conn, 1)
        await conn.execute(
            "INSERT INTO certificate (id, ca_generation_id, serial, kind, resident_hash, municipality_code,"
            " partition, not_before, not_after, der) VALUES ($1,$2,$3,'signing',$4,'131016',$5,$6,$7,'\\x3000')",
            cid, rt.issuers.current("signing").db_id, serial.to_bytes(16, "big"), secrets.token_bytes(32),
            partition, now, now + dt.timedelta(days=365))
    return serial


async def test_new_partition_is_published_on_first_request(http, rt):
    partition = 700_000 + secrets.randbelow(99_999)
    name = f"g{rt.issuers.current('signing').generation}-p{partition}"
    await _certificate_in_partition(rt, partition)
    for suffix in ("", "-delta"):
        resp = await http.get(f"/crl/signing/{name}{suffix}.crl")
        assert resp.status == 200, await resp.text()
        crl = x509.load_der_x509_crl(await resp.read())
        assert crl.is_signature_valid(x509.load_der_x509_certificate(
            rt.issuers.current("signing").certificate_der).public_key())
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical and idp.value.full_name[0].value.endswith(f"/crl/signing/{name}.crl")
        assert len(crl) == 0


async def test_partition_without_certificates_is_404(http, rt):
    name = f"g{rt.issuers.current('signing').generation}-p{800_000 + secrets.randbelow(99_999)}"
    resp = await http.get(f"/crl/signing/{name}.crl")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "crl_not_published"
