"""Operators manage clients and operators with the command line: `shomei client add` issues a
certificate of the operations CA (from a CSR, or with a key pair written owner-only), `rotate` gives a
new one and retires the old, `disable` refuses the client; `shomei operator add|disable|list`. Each
takes effect on every process within a second (the service's cache included)."""
from __future__ import annotations

import asyncio
import os
import secrets
import stat
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers import csr_pem
from tests.tls_clients import Credential


async def shomei(*args, env):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shomei.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def _call(http, cred: Credential) -> tuple[int, str | None]:
    resp = await http.post("/v1/holds", json={"request_id": "x", "serial": "zz"}, **cred.auth())
    body = await resp.json()
    return resp.status, body["error"]["code"]  # 400 invalid serial once client and operator are accepted


async def _within_a_second(http, cred, expected) -> None:
    for _ in range(50):
        if await _call(http, cred) == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not {expected} within a second: {await _call(http, cred)}")


async def test_add_rotate_disable_a_terminal(http, tls, stack_env, tmp_path, rt):
    name = f"admin-{secrets.token_hex(4)}"
    rc, out, err = await shomei("client", "add", "--kind", "terminal", "--municipality", "131016", "--name", name,
                                "--out", str(tmp_path / "a"), env=stack_env)
    assert rc == 0, err
    crt, key = tmp_path / "a" / f"{name}.crt", tmp_path / "a" / f"{name}.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN={name},L=131016,OU=terminal,O=shomei"
    ops = x509.load_pem_x509_certificate(tls.client_ca.read_bytes())
    cert.verify_directly_issued_by(ops)
    assert x509.ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    old = Credential(crt, key, tls.client_ca, operator="admin-clerk")
    assert await _call(http, old) == (403, "unknown_operator")  # the operator is not registered yet
    rc, out, err = await shomei("operator", "add", "--municipality", "131016", "--id", "admin-clerk", env=stack_env)
    assert rc == 0 and "registered" in out, err
    await _within_a_second(http, old, (400, "invalid_serial"))
    rc, out, err = await shomei("client", "list", env=stack_env)
    assert rc == 0 and any(line.startswith(f"{name}\tterminal\t131016\t") and line.endswith("enabled")
                           for line in out.splitlines()), out
    rc, out, err = await shomei("client", "rotate", name, "--out", str(tmp_path / "b"), env=stack_env)
    assert rc == 0 and "1 earlier certificate(s) retired" in out, err
    new = Credential(tmp_path / "b" / f"{name}.crt", tmp_path / "b" / f"{name}.key", tls.client_ca, "admin-clerk")
    await _within_a_second(http, old, (403, "client_not_authorised"))
    assert await _call(http, new) == (400, "invalid_serial")
    rc, out, err = await shomei("operator", "disable", "--municipality", "131016", "--id", "admin-clerk",
                                env=stack_env)
    assert rc == 0 and "disabled" in out, err
    await _within_a_second(http, new, (403, "unknown_operator"))
    rc, out, err = await shomei("client", "disable", name, env=stack_env)
    assert rc == 0 and "disabled" in out
    await _within_a_second(http, new, (403, "client_not_authorised"))
    rc, out, _err = await shomei("client", "list", env=stack_env)
    assert any(line.startswith(f"{name}\t") and "disabled" in line for line in out.splitlines())
    rc, out, err = await shomei("client", "disable", "nobody-at-all", env=stack_env)
    assert rc != 0 and "no client named" in err
    async with rt.pool.acquire() as conn:  # every change is in the audit trail, with who ran the command
        rows = await conn.fetch("SELECT action, operator_id FROM audit_log WHERE details->>'name' = $1"
                                " OR (details->>'operator' = 'admin-clerk') ORDER BY seq", name)
    assert [r["action"] for r in rows] == ["client_added", "client_certificate_issued", "operator_added",
                                           "client_certificate_rotated", "operator_disabled", "client_disabled"]
    assert all(r["operator_id"] for r in rows)


async def test_add_from_a_csr_keeps_the_key_with_the_client(http, tls, stack_env, tmp_path, keys):
    name = f"feed-{secrets.token_hex(4)}"
    key = keys.new()
    (tmp_path / "req.pem").write_text(csr_pem(key, cn="anything"))
    rc, out, err = await shomei("client", "add", "--kind", "feed", "--name", name, "--csr", str(tmp_path / "req.pem"),
                                "--out", str(tmp_path), env=stack_env)
    assert rc == 0, err
    assert not (tmp_path / f"{name}.key").exists()
    cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.crt").read_bytes())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.subject.rfc4514_string() == f"CN={name},OU=feed,O=shomei"
    (tmp_path / "own.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    cred = Credential(tmp_path / f"{name}.crt", tmp_path / "own.key", tls.client_ca)
    resp = await http.post("/v1/residency-events", data=b"{}", ssl=cred.ssl, headers={"Content-Type": "application/json"})
    assert resp.status == 400  # accepted as the feed (an empty batch is invalid)


async def test_bad_commands_are_refused(stack_env, tmp_path):
    for args, words in ((("client", "add", "--kind", "terminal", "--name", "x"), "needs --municipality"),
                        (("client", "add", "--kind", "feed", "--name", "x", "--municipality", "131016"),
                         "has no municipality"),
                        (("operator", "add", "--id", "x"), "exactly one of"),
                        (("operator", "add", "--municipality", "131017", "--id", "x"), "check digit"),
                        (("operator", "add", "--national", "--id", "bad id"), "--id must be"),
                        (("operator", "disable", "--national", "--id", "never-was"), "no operator")):
        rc, _out, err = await shomei(*args, env=stack_env)
        assert rc != 0 and words in err, (args, err)
