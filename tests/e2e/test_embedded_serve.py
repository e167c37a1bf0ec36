"""`shomei serve` with no configuration: the embedded PostgreSQL and SoftHSM token under var/, the key
ceremony on first start, the two listeners (public plain HTTP, private HTTPS with a client certificate of
the operations CA required), the demo terminal's certificate under var/tls, and a second start that
reuses all of it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shomei.embedded import free_port
from tests.helpers import KeyPool, issue_body
from tests.tls_clients import client_context

EXE = str(Path(sys.executable).with_name("shomei"))
TERMINAL_FILES = ("tls/operations-ca.pem", "tls/demo-terminal.crt", "tls/demo-terminal.key")


def _env(var: Path, port: int, pg_port: int, private_port: int | None = None) -> dict:
    """The environment of a `shomei` command on the embedded default under ``var`` (both listeners on
    ports of their own, so that tests never collide on the private listener's default 8443)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHOMEI_", "DATABASE_URL", "SOFTHSM2_CONF", "PROMETHEUS_MULTIPROC_DIR"))}
    env.update({"SHOMEI_VAR_DIR": str(var), "SHOMEI_LISTEN": f"127.0.0.1:{port}", "SHOMEI_PG_PORT": str(pg_port),
                "SHOMEI_PRIVATE_LISTEN": f"127.0.0.1:{private_port or free_port()}"})
    return env


def _terminal_context(var: Path) -> ssl.SSLContext:
    """What the README tells a terminal to use: the operations CA and the demo terminal's certificate."""
    ca, cert, key = (var / f for f in TERMINAL_FILES)
    return client_context(ca, cert, key)


def _wait_ready(port: int, private_port: int, var: Path, proc: subprocess.Popen, timeout: float = 90) -> dict:
    """Both listeners up: the public /healthz, then the private (detailed) one with the demo terminal's
    certificate. Returns the detailed health."""
    deadline = time.time() + timeout
    public_ok = False
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read()}")
        try:
            if not public_ok:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok"}  # the public listener says no more
                public_ok = True
            with urllib.request.urlopen(f"https://127.0.0.1:{private_port}/healthz", timeout=2,
                                        context=_terminal_context(var)) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, FileNotFoundError, ssl.SSLError):
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


def _request(url: str, body: dict | None = None, headers: dict | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, dict | bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def _refused_without_client_certificate(private_port: int, ca: Path) -> None:
    """The private listener's TLS handshake fails for a client that presents no certificate (even one that
    trusts the server): no HTTP request is ever read from it."""
    # TLS 1.2: the server's refusal ends the handshake itself
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", private_port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                tls.recv(1024)
    # TLS 1.3 (the default): the client's side of the handshake completes, the server then refuses it
    # with an alert instead of an answer
    with socket.create_connection(("127.0.0.1", private_port), timeout=10) as raw:
        try:
            with client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = tls.recv(1024)
        except (ssl.SSLError, ConnectionError) as exc:
            answer = exc
    assert not isinstance(answer, bytes) or answer == b"", answer  # an alert (or a closed connection)
    # and a plain HTTP client gets nothing from it either
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{private_port}/healthz", timeout=10, context=client_context(ca))


def _curl_issue(var: Path, private_port: int, body: dict) -> tuple[int, dict]:
    """The README's curl call, run from the folder holding var/ so that its relative paths are the same."""
    (var.parent / "body.json").write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    res = subprocess.run(
        ["curl", "-sS", "--cacert", "var/tls/operations-ca.pem", "--cert", "var/tls/demo-terminal.crt",
         "--key", "var/tls/demo-terminal.key", "-H", "X-Operator-Id: demo-clerk",
         f"https://127.0.0.1:{private_port}/v1/certificates",
         "-H", "Content-Type: application/json", "-d", "@body.json", "-w", "\n%{http_code}"],
        cwd=var.parent, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    text, code = res.stdout.rsplit("\n", 1)
    return int(code), json.loads(text)


@pytest.mark.slow
def test_embedded_default_first_and_second_start(tmp_path):
    var = tmp_path / "var"
    port, pg_port, private_port = free_port(), free_port(), free_port()
    env = _env(var, port, pg_port, private_port)
    private = f"https://127.0.0.1:{private_port}"
    proc = subprocess.Popen([EXE, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = _wait_ready(port, private_port, var, proc)
        assert health["status"] == "ok" and health["checks"]["database"] == "ok", health
        # secrets kept in owner-only files; the bearer credentials of old are gone
        for secret in ("tls/demo-terminal.key", "tls/demo-feed.key", "tls/server.key", "resident-hash.key",
                       "softhsm/user.pin", "softhsm/so.pin", "pg/password"):
            assert (var / secret).stat().st_mode & 0o077 == 0, secret
        for made in ("tls/operations-ca.pem", "tls/server.crt", "tls/demo-terminal.crt", "tls/demo-feed.crt"):
            assert (var / made).is_file(), made
        assert not (var / "demo-terminal.token").exists() and not (var / "demo-feed.token").exists()
        terminal_cert = (var / "tls/demo-terminal.crt").read_bytes()

        # the public listener: no terminal, feed or operations endpoint
        body = issue_body(KeyPool())
        status, data = _request(f"http://127.0.0.1:{port}/v1/certificates", body, {"X-Operator-Id": "demo-clerk"})
        assert status == 404 and data["error"]["code"] == "private_listener_only", data
        status, data = _request(f"http://127.0.0.1:{port}/metrics")
        assert status == 404 and data["error"]["code"] == "private_listener_only", data

        # the private listener: no TLS session without a client certificate of the operations CA
        _refused_without_client_certificate(private_port, var / "tls/operations-ca.pem")

        # with the demo terminal's certificate and its registered operator: issued
        ctx = _terminal_context(var)
        status, data = _request(f"{private}/v1/certificates", body, {"X-Operator-Id": "demo-clerk"}, ctx)
        assert status == 201, data
        status, data = _request(f"{private}/v1/certificates", issue_body(KeyPool(), kinds=("auth",)),
                                {"X-Operator-Id": "not-registered"}, ctx)
        assert status == 403 and data["error"]["code"] == "unknown_operator", data
        status, metrics = _request(f"{private}/metrics", context=ctx)
        assert status == 200 and b"shomei_" in metrics
        # the README's form of the call
        if shutil.which("curl"):
            status, data = _curl_issue(var, private_port, issue_body(KeyPool(), kinds=("auth",)))
            assert status == 201, data
            res = subprocess.run(["curl", "-sS", "--cacert", "var/tls/operations-ca.pem",
                                  f"{private}/v1/certificates", "-d", "{}"],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert res.returncode != 0, res.stdout  # no client certificate: no answer at all
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ca/signing.crt") as r:
            first_ca = r.read()
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err
    # PostgreSQL was stopped with the service
    pg_status = subprocess.run(["bash", "-c", "ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1"], capture_output=True,
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
        _wait_ready(port, private_port, var, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ca/signing.crt") as r:
            assert r.read() == first_ca
        assert (var / "tls/demo-terminal.crt").read_bytes() == terminal_cert
        status, data = _request(f"{private}/v1/certificates", issue_body(KeyPool(), kinds=("auth",)),
                                {"X-Operator-Id": "demo-clerk"}, _terminal_context(var))
        assert status == 201, data
    finally:
        err = _stop(proc)
    assert "created CA" not in err  # no second ceremony
