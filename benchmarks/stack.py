"""A private stack for benchmarks: PostgreSQL and a SoftHSM token in a temporary folder, and
`shomei serve` subprocesses against them. Everything is stopped and removed on exit."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from plumbing.tls import client_context
from shomei.embedded import EmbeddedPostgres, EmbeddedToken, free_port

EXE = str(Path(sys.executable).with_name("shomei"))
DEMO_OPERATOR = "demo-clerk"  # the registered operator of the demo terminal (municipality 131016)


@dataclass(frozen=True)
class ClientCredential:
    """A client certificate of the private listener (files; picklable, so it can go to a load process)."""
    cert_file: Path
    key_file: Path
    ca_file: Path
    operator: str | None = None  # X-Operator-Id of a terminal's requests

    def ssl_context(self) -> ssl.SSLContext:
        return client_context(self.ca_file, self.cert_file, self.key_file)

    def headers(self) -> dict:
        return {"X-Operator-Id": self.operator} if self.operator else {}

    def proxy_headers(self) -> dict:
        """What a TLS-terminating proxy adds after verifying this certificate (server.private_tls = false)."""
        from cryptography import x509
        serial = x509.load_pem_x509_certificate(self.cert_file.read_bytes()).serial_number
        return {**self.headers(), "X-Client-Certificate-Serial": format(serial, "x")}


class Stack:
    def __init__(self, toml: str | None = None):
        """``toml``: configuration of the servers of this stack (SHOMEI_CONFIG), if any."""
        self.dir = Path(tempfile.mkdtemp(prefix="shomei-bench-"))
        self.toml = None
        if toml:
            self.toml = self.dir / "shomei.toml"
            self.toml.write_text(toml)
        self.pg = EmbeddedPostgres(self.dir / "pg", free_port())
        self.pg.ensure_started()
        # In-process loaders connect as the owner (bulk shortcuts: triggers off, indexes dropped); the
        # servers run as the service role (env).
        self.url = self.pg.owner_url
        self.token = EmbeddedToken(self.dir / "softhsm").ensure()
        self.key_file = self.dir / "resident-hash.key"
        self.key_file.write_bytes(secrets.token_bytes(32))
        self.port = free_port()
        self.private_port = free_port()
        self.server = None
        self.behind_proxy = False  # the private listener in plain HTTP behind a (simulated) TLS proxy

    def use_proxy_mode(self) -> None:
        """Next servers: private listener without TLS, believing X-Client-Certificate-Serial from 127.0.0.1
        (as behind a TLS-terminating proxy on this host)."""
        self.toml = self.dir / "proxy.toml"
        self.toml.write_text('[server]\nprivate_tls = false\ntrusted_proxies = ["127.0.0.1"]\n')
        self.behind_proxy = True

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOMEI_", "PROMETHEUS_MULTIPROC_DIR"))}
        env.update({
            "DATABASE_URL": self.pg.url, "DATABASE_OWNER_URL": self.pg.owner_url,
            "SHOMEI_PKCS11_MODULE": self.token.module,
            "SHOMEI_PKCS11_TOKEN": self.token.label, "SHOMEI_PKCS11_PIN_FILE": self.token.pin_file,
            "SHOMEI_RESIDENT_KEY_FILE": str(self.key_file), "SOFTHSM2_CONF": self.token.conf,
            "SHOMEI_VAR_DIR": str(self.dir / "var"), "SHOMEI_LISTEN": f"127.0.0.1:{self.port}",
            "SHOMEI_PRIVATE_LISTEN": f"127.0.0.1:{self.private_port}",
            "SHOMEI_DEMO_CLIENTS": "1",
        })
        if self.toml:
            env["SHOMEI_CONFIG"] = str(self.toml)
        return env

    def config(self):
        """The configuration a server of this stack runs with (for in-process use)."""
        from ca_core import config
        return config.load(env=self.env)

    def serve(self, workers: int = 2, timeout: float = 120) -> None:
        self.server = subprocess.Popen([EXE, "serve", "--workers", str(workers)], env=self.env,
                                       stdout=subprocess.DEVNULL, stderr=open(self.dir / "serve.log", "w"))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError((self.dir / "serve.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{self.public_url}/healthz", timeout=2) as r:
                    public_ok = json.loads(r.read())["status"] == "ok"
                # the private listener too (it starts just after the public one in each worker)
                if public_ok:
                    context = None if self.behind_proxy else self.ssl_context()
                    with urllib.request.urlopen(f"{self.private_url}/healthz", timeout=2, context=context) as r:
                        if json.loads(r.read())["status"] == "ok":
                            return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not start")

    @property
    def public_url(self) -> str:
        """The public listener (plain HTTP: OCSP, CRLs, CA certificates, the online window)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def private_url(self) -> str:
        """The private listener (HTTPS, client certificate required: terminals, the feed, /metrics)."""
        return f"{'http' if self.behind_proxy else 'https'}://127.0.0.1:{self.private_port}"

    @property
    def tls_dir(self) -> Path:
        """Where `shomei serve` keeps the operations CA, its server certificate and the demo clients'."""
        return self.dir / "var" / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "operations-ca.pem"

    def demo_credential(self, name: str = "demo-terminal") -> ClientCredential:
        """The certificate `shomei serve` made for its demo client ``name`` (demo-terminal, demo-feed)."""
        return ClientCredential(self.tls_dir / f"{name}.crt", self.tls_dir / f"{name}.key", self.ca_file,
                                DEMO_OPERATOR if name == "demo-terminal" else None)

    def ssl_context(self, name: str = "demo-terminal") -> ssl.SSLContext:
        return self.demo_credential(name).ssl_context()

    def server_rss_mb(self) -> float:
        """Resident memory of the server and its workers, MB."""
        if not self.server:
            return 0.0
        pids = [self.server.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.server.pid)], capture_output=True, text=True).stdout
            pids += [int(p) for p in out.split()]
        except OSError:
            pass
        total = 0
        for pid in pids:
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
        self.server = None

    def close(self) -> None:
        self.stop_server()
        self.pg.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
