"""`shomei online revoke|check` against the running service (a real loopback server)."""
from __future__ import annotations

import asyncio
import json
import sys

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.integration.revocation_support import new_holder, status_of


async def shomei(*args):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shomei.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_online_cli_check_then_revoke(http, public, terminal, keys, rt, tmp_path):
    h = await new_holder(http, terminal, keys)
    cert = tmp_path / "auth.pem"
    cert.write_bytes(h.certs["auth"].public_bytes(Encoding.PEM))
    key = tmp_path / "auth.key"
    key.write_bytes(h.keys["auth"].private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    url = str(public.make_url("")).rstrip("/")  # the online window is on the public listener
    applicant = ["--name", "山田　花子", "--address", "東京都千代田区千代田１番１号", "--birth-date", "319850412",
                 "--sex", "2"]
    rc, out, err = await shomei("online", "check", "--cert", str(cert), "--key", str(key), "--url", url, *applicant)
    assert rc == 0, err
    assert json.loads(out)["result"] == "valid"
    rc, out, err = await shomei("online", "revoke", "--cert", str(cert), "--key", str(key), "--url", url, *applicant)
    assert rc == 0, err
    assert json.loads(out)["status"] == "accepted"
    rc, out, err = await shomei("online", "revoke", "--cert", str(cert), "--key", str(key), "--url", url, *applicant)
    assert rc == 1 and "already_requested" in err and "二重の失効申請" in err
    # A signing certificate carries the basic-4 information: no applicant options needed.
    scert = tmp_path / "signing.pem"
    scert.write_bytes(h.certs["signing"].public_bytes(Encoding.PEM))
    skey = tmp_path / "signing.key"
    skey.write_bytes(h.keys["signing"].private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    rc, out, err = await shomei("online", "check", "--cert", str(scert), "--key", str(skey), "--url", url)
    assert rc == 0, err
    assert json.loads(out)["result"] == "revocation_accepted"  # cascaded from the auth application
    assert await status_of(rt, h.serial("auth")) == "valid"
