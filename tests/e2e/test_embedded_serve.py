"""`shomei serve` with no configuration: the embedded PostgreSQL and SoftHSM token under var/, the key
ceremony on first start, the demo terminal credential, and a second start that reuses all of it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shomei.embedded import free_port
from tests.helpers import KeyPool, issue_body

EXE = str(Path(sys.executable).with_name("shomei"))


def _env(var: Path, port: int, pg_port: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHOMEI_", "DATABASE_URL", "SOFTHSM2_CONF", "PROMETHEUS_MULTIPROC_DIR"))}
    env.update({"SHOMEI_VAR_DIR": str(var), "SHOMEI_LISTEN": f"127.0.0.1:{port}", "SHOMEI_PG_PORT": str(pg_port)})
    return env


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise AssertionError("serve did not become ready")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err


def _post(port: int, path: str, body: dict, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_embedded_default_first_and_second_start(tmp_path):
    var = tmp_path / "var"
    port, pg_port = free_port(), free_port()
    env = _env(var, port, pg_port)
    proc = subprocess.Popen([EXE, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = _wait_ready(port, proc)
        assert health["status"] == "ok", health
        # secrets kept in owner-only files
        for secret in ("demo-terminal.token", "demo-feed.token", "resident-hash.key", "softhsm/user.pin",
                       "softhsm/so.pin", "pg/password"):
            assert (var / secret).stat().st_mode & 0o077 == 0, secret
        token = (var / "demo-terminal.token").read_text().strip()
        status, data = _post(port, "/v1/certificates", issue_body(KeyPool()),
                             {"Authorization": f"Bearer {token}", "X-Operator-Id": "demo-clerk"})
        assert status == 201, data
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ca/signing.crt") as r:
            first_ca = r.read()
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err
    # PostgreSQL was stopped with the service
    pg_status = subprocess.run(["bash", "-c", f"ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1"], capture_output=True,
                               text=True).stdout.strip()
    if os.geteuid() == 0:
        st = subprocess.run(["runuser", "-u", "postgres", "--", pg_status, "-D", str(var / "pg/data"), "status"],
                            capture_output=True)
    else:
        st = subprocess.run([pg_status, "-D", str(var / "pg/data"), "status"], capture_output=True)
    assert st.returncode != 0

    # second start: same cluster, same token, same CA, same demo credential
    proc = subprocess.Popen([EXE, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ca/signing.crt") as r:
            assert r.read() == first_ca
        assert (var / "demo-terminal.token").read_text().strip() == token
        status, data = _post(port, "/v1/certificates", issue_body(KeyPool(), kinds=("auth",)),
                             {"Authorization": f"Bearer {token}", "X-Operator-Id": "demo-clerk"})
        assert status == 201, data
    finally:
        err = _stop(proc)
    assert "created CA" not in err  # no second ceremony
