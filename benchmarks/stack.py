"""A private stack for benchmarks: PostgreSQL and a SoftHSM token in a temporary folder, and
`shomei serve` subprocesses against them. Everything is stopped and removed on exit."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from shomei.embedded import EmbeddedPostgres, EmbeddedToken, free_port

EXE = str(Path(sys.executable).with_name("shomei"))


class Stack:
    def __init__(self, toml: str | None = None):
        """``toml``: configuration of the servers of this stack (SHOMEI_CONFIG), if any."""
        self.dir = Path(tempfile.mkdtemp(prefix="shomei-bench-"))
        self.toml = None
        if toml:
            self.toml = self.dir / "shomei.toml"
            self.toml.write_text(toml)
        self.pg = EmbeddedPostgres(self.dir / "pg", free_port())
        self.url = self.pg.ensure_started()
        self.token = EmbeddedToken(self.dir / "softhsm").ensure()
        self.key_file = self.dir / "resident-hash.key"
        self.key_file.write_bytes(secrets.token_bytes(32))
        self.port = free_port()
        self.server = None

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOMEI_", "PROMETHEUS_MULTIPROC_DIR"))}
        env.update({
            "DATABASE_URL": self.url, "SHOMEI_PKCS11_MODULE": self.token.module,
            "SHOMEI_PKCS11_TOKEN": self.token.label, "SHOMEI_PKCS11_PIN_FILE": self.token.pin_file,
            "SHOMEI_RESIDENT_KEY_FILE": str(self.key_file), "SOFTHSM2_CONF": self.token.conf,
            "SHOMEI_VAR_DIR": str(self.dir / "var"), "SHOMEI_LISTEN": f"127.0.0.1:{self.port}",
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
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                    if json.loads(r.read())["status"] == "ok":
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not start")

    def demo_token(self, name: str = "demo-terminal") -> str:
        return (self.dir / "var" / f"{name}.token").read_text().strip()

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
