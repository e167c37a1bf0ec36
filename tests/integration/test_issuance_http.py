"""Issuance over HTTP on the real PostgreSQL and SoftHSM token."""
from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from ca_core.clock import JST
from ca_core.errors import HSMError
from tests.helpers import certs_by_kind, csr_pem, issue, issue_body, resident


async def _count(rt, sql, *args):
    async with rt.pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


async def _totals(rt):
    return (await _count(rt, "SELECT count(*) FROM certificate"), await _count(rt, "SELECT count(*) FROM issuance"),
            await _count(rt, "SELECT count(*) FROM audit_log"), await _count(rt, "SELECT count(*) FROM revocation"))


async def test_issue_both_kinds_verifies_against_ca(http, terminal, keys, rt, ca_pem, tmp_path):
    data = await issue(http, terminal, issue_body(keys))
    certs = certs_by_kind(data)
    assert set(certs) == {"signing", "auth"}
    for kind, cert in certs.items():
        ca = x509.load_der_x509_certificate(rt.issuers.current(kind).certificate_der)
        cert.verify_directly_issued_by(ca)
        path = tmp_path / f"{kind}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        res = subprocess.run(["openssl", "verify", "-CAfile", ca_pem[kind], str(path)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert format(cert.serial_number, "x").rjust(32, "0") in [c["serial"] for c in data["certificates"]]


async def test_certificate_fields_match_the_request(http, terminal, keys, rt):
    body = issue_body(keys, resident=resident(name="髙橋　一郎".replace("髙", "高"), name_substitutes="10000",
                                              birth_date="419900301", sex="1"),
                      card_expires_on="2029-06-30")
    data = await issue(http, terminal, body)
    certs = certs_by_kind(data)
    signing, auth = certs["signing"], certs["auth"]
    assert signing.subject.rfc4514_string().endswith("L=Chiyoda-ku,L=Tokyo-to,C=JP")
    others = {o.type_id.dotted_string: o.value for o in
              signing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
    assert others["1.2.392.200149.8.5.5.1"] == b"\x0c" + bytes([len("高橋　一郎".encode())]) + "高橋　一郎".encode()
    assert b"10000" in others["1.2.392.200149.8.5.5.2"] and b"419900301" in others["1.2.392.200149.8.5.5.4"]
    assert auth.subject.rfc4514_string().startswith("CN=") and auth.subject.rfc4514_string().endswith(",C=JP")
    # card expiry (2029-06-30) comes before the 5th birthday (2031-03-01): capped, end of day in Japan
    for cert in (signing, auth):
        assert cert.not_valid_after_utc.astimezone(JST) == dt.datetime(2029, 6, 30, 23, 59, 59, tzinfo=JST)
    # the partition named in the CDP is the one stored with the certificate
    async with rt.pool.acquire() as conn:
        part = await conn.fetchval("SELECT partition FROM certificate WHERE serial = $1",
                                   signing.serial_number.to_bytes(16, "big"))
    cdp = signing.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
    assert cdp[0].full_name[0].value.endswith(f"/crl/signing/g1-p{part}.crl")


async def test_replay_answers_same_certificates_and_issues_nothing(http, terminal, keys, rt):
    body = issue_body(keys)
    first = await issue(http, terminal, body)
    before = await _totals(rt)
    again = await issue(http, terminal, body, expect=200)
    assert again["certificates"] == first["certificates"]
    assert await _totals(rt) == before


async def test_same_request_id_with_other_body_is_409(http, terminal, keys, rt):
    body = issue_body(keys)
    await issue(http, terminal, body)
    before = await _totals(rt)
    changed = dict(body, card_expires_on="2030-01-01")
    data = await issue(http, terminal, changed, expect=409)
    assert data["error"]["code"] == "idempotency_conflict" and data["error"]["field"] == "request_id"
    assert await _totals(rt) == before


async def test_new_certificate_supersedes_the_old_one_of_the_same_kind(http, terminal, keys, rt):
    body = issue_body(keys)
    first = certs_by_kind(await issue(http, terminal, body))
    renewal = issue_body(keys, kinds=("signing",), code=body["resident_code"], card_replaced=True)
    second = certs_by_kind(await issue(http, terminal, renewal))
    async with rt.pool.acquire() as conn:
        rows = {bytes(r["serial"]): r for r in await conn.fetch(
            "SELECT c.serial, c.status, r.reason, r.source FROM certificate c LEFT JOIN revocation r"
            " ON r.certificate_id = c.id WHERE c.serial = ANY($1::bytea[])",
            [c.serial_number.to_bytes(16, "big") for c in (first["signing"], first["auth"], second["signing"])])}
    old = rows[first["signing"].serial_number.to_bytes(16, "big")]
    assert (old["status"], old["reason"], old["source"]) == ("revoked", 4, "supersede")
    assert rows[first["auth"].serial_number.to_bytes(16, "big")]["status"] == "valid"
    assert rows[second["signing"].serial_number.to_bytes(16, "big")]["status"] == "valid"


async def test_early_renewal_is_refused_before_signing(http, terminal, keys, rt):
    body = issue_body(keys)
    await issue(http, terminal, body)
    before = await _totals(rt)
    again = issue_body(keys, kinds=("auth",), code=body["resident_code"])
    data = await issue(http, terminal, again, expect=409)
    assert data["error"]["code"] == "renewal_too_early" and data["error"]["field"] == "card_replaced"
    assert await _totals(rt) == before


async def test_renewal_within_three_months_of_expiry_supersedes(http, terminal, keys, rt):
    soon = (dt.date.today() + dt.timedelta(days=60)).isoformat()
    body = issue_body(keys, kinds=("auth",), card_expires_on=soon)
    first = certs_by_kind(await issue(http, terminal, body))["auth"]
    renewed = certs_by_kind(await issue(http, terminal, issue_body(keys, kinds=("auth",), code=body["resident_code"])))
    async with rt.pool.acquire() as conn:
        status = await conn.fetchval("SELECT status FROM certificate WHERE serial = $1",
                                     first.serial_number.to_bytes(16, "big"))
    assert status == "revoked" and renewed["auth"].serial_number != first.serial_number


async def test_audit_records_issue_with_operator_and_no_personal_data(http, terminal, keys, rt):
    body = issue_body(keys)
    data = await issue(http, terminal, body)
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT action, operator_id, details::text AS d FROM audit_log WHERE request_id = $1",
                                body["request_id"])
        stored = await conn.fetch("SELECT resident_hash FROM certificate WHERE issuance_id = "
                                  "(SELECT id FROM issuance WHERE request_id = $1)", body["request_id"])
    assert sorted(r["action"] for r in rows) == ["issue", "issue"]
    assert all(r["operator_id"] == "clerk-01" for r in rows)
    for r in rows:
        assert body["resident_code"] not in r["d"] and "山田" not in r["d"]
    assert all(body["resident_code"].encode() not in bytes(s["resident_hash"]) for s in stored)
    assert len(data["certificates"]) == 2


# -- rejections: each a typed error, nothing stored --------------------------------------------------------

def _bad(keys, case):
    b = issue_body(keys)
    if case == "under_15":
        from ca_core.resident import era_of
        born = dt.date.today().replace(year=dt.date.today().year - 10)
        b["resident"]["birth_date"] = f"{era_of(born)}{born:%Y%m%d}"
    elif case == "adult_ward":
        b["adult_ward"] = True
    elif case == "char":
        b["resident"]["name"] = "髙橋"
        b["resident"]["name_substitutes"] = "00"
    elif case == "flags":
        b["resident"]["address_substitutes"] = "0"
    elif case == "birth":
        b["resident"]["birth_date"] = "419800515"
    elif case == "sex":
        b["resident"]["sex"] = "5"
    elif case == "card_expired":
        b["card_expires_on"] = "2020-01-01"
    elif case == "bad_csr":
        b["signing_csr"] = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    elif case == "no_csr":
        del b["signing_csr"], b["auth_csr"]
    elif case == "same_key":
        b["auth_csr"] = b["signing_csr"]
    elif case == "unknown_field":
        b["colour"] = "blue"
    elif case == "unknown_nested":
        b["resident"]["nickname"] = "x"
    elif case == "missing":
        del b["resident_code"]
    elif case == "wrong_type":
        b["resident"]["sex"] = 1
    elif case == "municipality":
        b["municipality_code"] = "131017"
    elif case == "other_municipality":
        b["municipality_code"] = "271004"
    elif case == "resident_code":
        b["resident_code"] = "123"
    elif case == "date":
        b["card_expires_on"] = "next year"
    return b


@pytest.mark.parametrize("case,status,code,field", [
    ("under_15", 422, "applicant_under_15", "resident.birth_date"),
    ("adult_ward", 422, "applicant_adult_ward", "adult_ward"),
    ("char", 422, "character_not_allowed", "resident.name"),
    ("flags", 422, "substitute_flags_mismatch", "resident.address_substitutes"),
    ("birth", 422, "invalid_birth_date", "resident.birth_date"),
    ("sex", 422, "invalid_sex", "resident.sex"),
    ("card_expired", 422, "card_expired", "card_expires_on"),
    ("bad_csr", 400, "bad_csr", "signing_csr"),
    ("no_csr", 400, "missing_csr", "signing_csr"),
    ("same_key", 400, "duplicate_key", "auth_csr"),
    ("unknown_field", 400, "unknown_field", "colour"),
    ("unknown_nested", 400, "unknown_field", "resident.nickname"),
    ("missing", 400, "missing_field", "resident_code"),
    ("wrong_type", 400, "invalid_field", "resident.sex"),
    ("municipality", 400, "invalid_municipality_code", "municipality_code"),
    ("other_municipality", 403, "municipality_mismatch", "municipality_code"),
    ("resident_code", 400, "invalid_resident_code", "resident_code"),
    ("date", 400, "invalid_date", "card_expires_on"),
])
async def test_rejections_are_typed_and_change_nothing(http, terminal, keys, rt, case, status, code, field):
    before = await _totals(rt)
    resp = await http.post("/v1/certificates", json=_bad(keys, case), **terminal.auth())
    data = await resp.json()
    assert resp.status == status, data
    assert data["error"]["code"] == code
    assert data["error"]["field"] == field
    assert data["error"]["message"]
    assert await _totals(rt) == before


async def test_csr_key_type_and_pop(http, terminal, keys, rt):
    from cryptography.hazmat.primitives.asymmetric import ec
    b = issue_body(keys)
    b["auth_csr"] = csr_pem(ec.generate_private_key(ec.SECP256R1()))
    resp = await http.post("/v1/certificates", json=b, **terminal.auth())
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "key_not_allowed"
    b = issue_body(keys)
    der = bytearray(x509.load_pem_x509_csr(b["signing_csr"].encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x40
    b["signing_csr"] = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    resp = await http.post("/v1/certificates", json=b, **terminal.auth())
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "csr_signature_invalid"


@pytest.mark.parametrize("raw,ctype,status,code", [
    (b"{not json", "application/json", 400, "malformed_json"),
    (b"[1, 2]", "application/json", 400, "invalid_field"),
    (b"\xff\xfe\x00", "application/json", 400, "malformed_json"),
    (b"{}", "text/plain", 415, "unsupported_media_type"),
    (b"{\"a\": \"" + b"x" * 70000 + b"\"}", "application/json", 413, "payload_too_large"),
])
async def test_bad_bodies(http, terminal, rt, raw, ctype, status, code):
    before = await _totals(rt)
    resp = await http.post("/v1/certificates", data=raw, ssl=terminal.ssl,
                           headers={"X-Operator-Id": terminal.operator, "Content-Type": ctype})
    data = await resp.json()
    assert resp.status == status, data
    assert data["error"]["code"] == code
    assert await _totals(rt) == before


async def test_client_kind_and_operator(http, terminal, keys, feed, rt):
    before = await _totals(rt)
    body = issue_body(keys)
    resp = await http.post("/v1/certificates", json=body, **feed.auth())
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "wrong_client_kind"
    resp = await http.post("/v1/certificates", json=body, ssl=terminal.ssl)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "missing_operator_id"
    resp = await http.post("/v1/certificates", json=body, **terminal.auth("bad id!"))
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_operator_id"
    resp = await http.post("/v1/certificates", json=body, **terminal.auth("never-registered"))
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "unknown_operator"
    assert await _totals(rt) == before


def _one_or_batch(path: str, keys):
    """A body of ``path``: one issuance, or a batch of three (refused whole when nothing can be issued)."""
    if path == "/v1/certificates":
        return issue_body(keys)
    return {"requests": [issue_body(keys) for _ in range(3)]}


@pytest.mark.parametrize("path", ["/v1/certificates", "/v1/certificate-batches"])
async def test_token_failure_gives_503_and_records_nothing(http, terminal, keys, rt, monkeypatch, path):
    # SoftHSM cannot be made to fail on demand: inject the failure at the Signer boundary.
    async def failing_sign(*_a, **_k):
        raise HSMError("the token failed to sign (DeviceError)")

    before = await _totals(rt)
    monkeypatch.setattr(rt.signer, "sign", failing_sign)
    resp = await http.post(path, json=_one_or_batch(path, keys), **terminal.auth())
    data = await resp.json()
    assert resp.status == 503 and data["error"]["code"] == "hsm_unavailable"
    assert resp.headers["Retry-After"]
    assert await _totals(rt) == before


@pytest.mark.parametrize("path", ["/v1/certificates", "/v1/certificate-batches"])
async def test_database_failure_after_signing_records_nothing(http, terminal, keys, rt, monkeypatch, path):
    from storage import issuance as issuance_store

    async def failing_insert(*_a, **_k):
        raise ConnectionResetError("connection lost")

    before = await _totals(rt)
    monkeypatch.setattr(issuance_store, "record", failing_insert)
    resp = await http.post(path, json=_one_or_batch(path, keys), **terminal.auth())
    data = await resp.json()
    assert resp.status == 503 and data["error"]["code"] == "database_unavailable", data
    assert await _totals(rt) == before


async def test_concurrent_requests_for_one_resident_leave_one_live_certificate(http, terminal, keys, rt):
    import asyncio
    code = issue_body(keys)["resident_code"]
    bodies = [issue_body(keys, kinds=("auth",), code=code, card_replaced=True) for _ in range(4)]
    resps = await asyncio.gather(*(http.post("/v1/certificates", json=b, **terminal.auth()) for b in bodies))
    statuses = sorted(r.status for r in resps)
    assert all(s in (201, 409) for s in statuses) and 201 in statuses
    from ca_core.resident import resident_hash
    async with rt.pool.acquire() as conn:
        live = await conn.fetchval("SELECT count(*) FROM certificate WHERE resident_hash = $1 AND kind = 'auth'"
                                   " AND status <> 'revoked'", resident_hash(rt.resident_key, code))
    assert live == 1


# -- batches: POST /v1/certificate-batches ----------------------------------------------------------------

async def _batch(http, credential, requests: list, expect: int = 200) -> dict:
    resp = await http.post("/v1/certificate-batches", json={"requests": requests}, **credential.auth())
    data = await resp.json()
    assert resp.status == expect, data
    return data


async def test_batch_answers_each_request_in_its_place(http, terminal, keys, rt, ca_pem, tmp_path):
    earlier = issue_body(keys)
    first = await issue(http, terminal, earlier)
    bodies = [issue_body(keys), earlier, issue_body(keys, kinds=("auth",), municipality_code="271004"),
              issue_body(keys, kinds=("auth",))]
    before = await _totals(rt)
    data = await _batch(http, terminal, bodies)
    results = data["results"]
    assert [r["request_id"] for r in results] == [b["request_id"] for b in bodies]
    assert [r["status"] for r in results] == [201, 200, 403, 201]
    assert results[2]["error"]["code"] == "municipality_mismatch" and "certificates" not in results[2]
    assert results[1]["certificates"] == first["certificates"]  # the replay: the same certificates
    after = await _totals(rt)
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (3, 2, 3)
    for n in (0, 3):
        for kind, cert in certs_by_kind(results[n]).items():
            cert.verify_directly_issued_by(x509.load_der_x509_certificate(rt.issuers.current(kind).certificate_der))
            path = tmp_path / f"{n}-{kind}.pem"
            path.write_text(next(c["certificate"] for c in results[n]["certificates"] if c["kind"] == kind))
            res = subprocess.run(["openssl", "verify", "-CAfile", ca_pem[kind], str(path)],
                                 capture_output=True, text=True)
            assert res.returncode == 0, res.stderr
        # each request of the batch is a request of its own: sent alone, it answers the same certificates
        again = await issue(http, terminal, bodies[n], expect=200)
        assert again["certificates"] == results[n]["certificates"]


@pytest.mark.parametrize("case,code,field", [
    ("empty", "invalid_field", "requests"),
    ("not_a_list", "invalid_field", "requests"),
    ("unknown_item_field", "unknown_field", "requests.1.colour"),
    ("bad_item", "missing_field", "requests.0.resident"),
    ("twice", "duplicate_request_id", "requests.2.request_id"),
    ("too_many", "batch_too_large", "requests"),
])
async def test_malformed_batches_are_refused_whole(http, terminal, keys, rt, case, code, field):
    good = [issue_body(keys, kinds=("auth",)) for _ in range(3)]
    requests = {
        "empty": [],
        "not_a_list": good[0],
        "unknown_item_field": [good[0], dict(good[1], colour="blue")],
        "bad_item": [{k: v for k, v in good[0].items() if k != "resident"}, good[1]],
        "twice": [good[0], good[1], dict(good[2], request_id=good[0]["request_id"])],
        "too_many": [dict(good[0], request_id=f"many-{n}-{good[0]['request_id']}")
                     for n in range(rt.cfg.issuance.batch_max_requests + 1)],
    }[case]
    before = await _totals(rt)
    data = await _batch(http, terminal, requests, expect=400)
    assert (data["error"]["code"], data["error"]["field"]) == (code, field)
    assert await _totals(rt) == before


async def test_batch_needs_a_terminal_and_its_operator(http, terminal, feed, keys, rt):
    body = {"requests": [issue_body(keys, kinds=("auth",))]}
    before = await _totals(rt)
    resp = await http.post("/v1/certificate-batches", json=body, **feed.auth())
    assert resp.status == 403, await resp.text()
    resp = await http.post("/v1/certificate-batches", json=body, ssl=terminal.ssl)  # no X-Operator-Id
    assert resp.status in (400, 403), await resp.text()
    assert await _totals(rt) == before
