"""Key ceremony, token start-up errors, CA certificates, health and metrics on the real stack."""
from __future__ import annotations

import dataclasses

import pytest
from cryptography import x509

from hsm.pkcs11_signer import PKCS11Signer, StartupError


async def test_ceremony_is_idempotent(rt):
    from shomei.operations import run_ceremony

    before = [(i.ca_id, i.generation, i.fingerprint_sha256) for i in rt.issuers]
    assert await run_ceremony(rt) == []
    assert [(i.ca_id, i.generation, i.fingerprint_sha256) for i in rt.issuers] == before


async def test_two_cas_with_distinct_names_and_keys_in_the_token(rt):
    signing, auth = rt.issuers.current("signing"), rt.issuers.current("auth")
    assert signing.name_der != auth.name_der and signing.key_id != auth.key_id
    for issuer in (signing, auth):
        cert = x509.load_der_x509_certificate(issuer.certificate_der)
        cert.verify_directly_issued_by(cert)
        assert await rt.signer.public_key(issuer.key_label) is not None


async def test_responder_certificates_issued_by_their_ca(rt):
    from storage import cas

    async with rt.pool.acquire() as conn:
        responders = await cas.latest_responders(conn)
    for issuer in rt.issuers:
        resp = x509.load_der_x509_certificate(responders[issuer.db_id].certificate)
        resp.verify_directly_issued_by(x509.load_der_x509_certificate(issuer.certificate_der))
        assert list(resp.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
        assert resp.extensions.get_extension_for_class(x509.OCSPNoCheck)
        assert (resp.not_valid_after_utc - resp.not_valid_before_utc).days <= 30
        assert await rt.signer.public_key(responders[issuer.db_id].key_label) is not None


def _shomei(env, *args):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("shomei")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=120)


def test_wrong_pin_is_a_clear_startup_error(stack_env, tmp_path):
    # A separate process: within one process the token is already logged in.
    pin = tmp_path / "pin"
    pin.write_text("000000-wrong")
    res = _shomei(dict(stack_env, SHOMEI_PKCS11_PIN_FILE=str(pin)), "ceremony")
    assert res.returncode == 2
    assert "wrong user PIN for token 'shomei'" in res.stderr
    assert "Traceback" not in res.stderr


def test_unreadable_pin_file_and_missing_database_are_clear(stack_env, tmp_path):
    res = _shomei(dict(stack_env, SHOMEI_PKCS11_PIN_FILE=str(tmp_path / "none")), "ca", "list")
    assert res.returncode == 2 and "cannot read the PIN file" in res.stderr
    res = _shomei(dict(stack_env, DATABASE_URL="postgresql://x:y@127.0.0.1:1/db"), "ca", "list")
    assert res.returncode == 2 and "PostgreSQL" in res.stderr and "Traceback" not in res.stderr


def test_ca_list_shows_fingerprints(stack_env, rt):
    res = _shomei(stack_env, "ca", "list")
    assert res.returncode == 0, res.stderr
    for issuer in rt.issuers:
        fp = ":".join(issuer.fingerprint_sha256[i:i + 2] for i in range(0, 64, 2)).upper()
        assert fp in res.stdout


async def test_missing_token_and_module_are_clear_startup_errors(cfg):
    signer = PKCS11Signer(cfg.hsm.module, "no-such-token", "1234")
    with pytest.raises(StartupError, match="no token labelled 'no-such-token'"):
        await signer.open()
    await signer.close()
    signer = PKCS11Signer("/nonexistent/libpkcs11.so", "shomei", "1234")
    with pytest.raises(StartupError, match="module not found"):
        await signer.open()
    await signer.close()


async def test_runtime_refuses_to_start_with_wrong_pin(cfg, tmp_path):
    from plumbing.runtime import open_runtime

    pin = tmp_path / "pin"
    pin.write_text("wrong-pin")
    bad = cfg.replace(hsm=cfg.hsm.replace(pin_file=str(pin)))
    with pytest.raises(StartupError):
        await open_runtime(bad, migrate=False)


async def test_missing_key_is_detected_at_start(rt):
    from ca_core.ca import Issuer
    from plumbing.runtime import check_keys

    real = rt.issuers
    fake = dataclasses.replace(rt.issuers.current("auth"), key_label="shomei-auth-g99")

    class _Set(list):
        pass

    rt.directory.issuers = _Set([fake])
    try:
        with pytest.raises(StartupError, match="shomei-auth-g99"):
            await check_keys(rt)
    finally:
        rt.directory.issuers = real
    assert isinstance(fake, Issuer)


async def test_ca_certificates_are_served(http, rt):
    for ca in ("signing", "auth"):
        resp = await http.get(f"/ca/{ca}.crt")
        assert resp.status == 200 and resp.content_type == "application/pkix-cert"
        assert await resp.read() == rt.issuers.current(ca).certificate_der
        key_id = rt.issuers.current(ca).key_id.hex()
        resp = await http.get(f"/ca/{ca}/{key_id}.crt")
        assert resp.status == 200 and await resp.read() == rt.issuers.current(ca).certificate_der
    resp = await http.get("/ca/signing/" + rt.issuers.current("auth").key_id.hex() + ".crt")
    assert resp.status == 404
    resp = await http.get("/ca/nosuch.crt")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_ca"
    listing = await (await http.get("/ca")).json()
    assert {c["ca"] for c in listing["cas"]} == {"signing", "auth"}


async def test_healthz_reports_database_and_token(http):
    resp = await http.get("/healthz")
    data = await resp.json()
    assert resp.status == 200, data
    assert data["checks"]["database"] == "ok" and data["checks"]["token"] == "ok"


async def test_healthz_fails_when_the_token_does_not_answer(http, rt, monkeypatch):
    from ca_core.errors import HSMError

    async def dead():
        raise HSMError("the token does not answer (DeviceRemoved)")

    monkeypatch.setattr(rt.signer, "ping", dead)
    resp = await http.get("/healthz")
    assert resp.status == 503 and "DeviceRemoved" in (await resp.json())["checks"]["token"]


async def test_metrics_count_issuance_and_signatures(http, terminal, keys):
    from tests.helpers import issue, issue_body

    def value(text, prefix):
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = await (await http.get("/metrics")).text()
    await issue(http, terminal, issue_body(keys))
    after = await (await http.get("/metrics")).text()
    assert value(after, 'shomei_issuance_total{kind="signing+auth",result="issued"}') == \
        value(before, 'shomei_issuance_total{kind="signing+auth",result="issued"}') + 1
    assert value(after, 'shomei_hsm_signatures_total{result="ok"}') >= \
        value(before, 'shomei_hsm_signatures_total{result="ok"}') + 2
    assert "shomei_issuance_seconds_bucket" in after and "shomei_hsm_sign_seconds_bucket" in after


async def test_unknown_route_is_json_404(http):
    resp = await http.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await http.get("/v1/certificates")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
