"""Test clients of the two listeners: credentials (a client certificate of the operations CA issued
through the product's own `shomei client add` code, its key, and an SSL context presenting it) and a
small HTTP client bound to one listener's base URL."""
from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import aiohttp
from yarl import URL

from plumbing.tls import client_context
from storage.clients import Client


@dataclass(frozen=True)
class Credential:
    cert_file: Path
    key_file: Path
    ca_file: Path
    operator: str | None = None  # the registered operator its requests name by default
    client: Client | None = None

    @cached_property
    def ssl(self) -> ssl.SSLContext:
        return client_context(self.ca_file, self.cert_file, self.key_file)

    def auth(self, operator: str | None = None) -> dict:
        """Keyword arguments of a request made as this client (and its registered operator)."""
        op = operator or self.operator
        return {"ssl": self.ssl, "headers": {"X-Operator-Id": op} if op else {}}


def var_credential(tls_dir: Path, name: str, operator: str | None = None) -> Credential:
    """A credential the embedded default wrote under var/tls (demo-terminal, demo-feed)."""
    return Credential(tls_dir / f"{name}.crt", tls_dir / f"{name}.key", tls_dir / "operations-ca.pem", operator)


async def make_credential(rt, folder: Path, *, kind: str, name: str | None = None,
                          municipality_code: str | None = None,
                          operators: tuple[str, ...] = ("clerk-01",)) -> Credential:
    """Register a client as `shomei client add` does and register its operators."""
    from shomei.credentials import add_client, set_operator, tls_files
    from storage.operators import NATIONAL

    name = name or f"{kind}-{secrets.token_hex(4)}"
    issued = await add_client(rt, kind=kind, name=name, municipality_code=municipality_code)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_bytes(issued.certificate_pem)
    key.write_bytes(issued.key_pem)
    if kind in ("terminal", "national"):
        for op in operators:
            await set_operator(rt, municipality_code or NATIONAL, op, enabled=True)
    operator = operators[0] if operators and kind in ("terminal", "national") else None
    return Credential(cert, key, tls_files(rt.cfg).client_ca, operator, issued.client)


class ApiClient:
    """requests against one listener: ``await client.post("/v1/...", **credential.auth())``. Without an
    ``ssl`` argument, requests to the private listener present ``default`` (a client certificate is
    required at the handshake there)."""

    def __init__(self, base: str, default: ssl.SSLContext | None = None, app=None):
        self.base = URL(base)
        self.default = default
        self.app = app  # the application served (tests reach a service's state through it)
        self.session = aiohttp.ClientSession()

    def make_url(self, path: str) -> URL:
        return self.base.join(URL(path)) if path else self.base

    def request(self, method: str, path: str, **kw):
        if self.default is not None:
            kw.setdefault("ssl", self.default)
        return self.session.request(method, self.make_url(path), **kw)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.request("POST", path, **kw)

    async def close(self) -> None:
        await self.session.close()


class TestServers:
    """An application on both listeners at free loopback ports, as a worker of `shomei serve` runs it,
    with clients of each: ``private`` (presenting ``default`` unless a request passes another ``ssl``)
    and ``public``."""

    __test__ = False  # not a test class

    def __init__(self, app, runner, public: ApiClient, private: ApiClient):
        self.app, self.runner, self.public, self.private = app, runner, public, private

    @classmethod
    async def start(cls, rt, tls, default: ssl.SSLContext | None = None, app=None,
                    listeners=None) -> "TestServers":
        from aiohttp import web

        from shomei.app import make_app
        from shomei.listeners import KEEPALIVE_SECONDS, Listeners, start

        listeners = listeners if listeners is not None else Listeners()
        app = app if app is not None else make_app(rt, listeners)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
        await runner.setup()
        cfg = rt.cfg.replace(server=rt.cfg.server.replace(port=0, private_port=0))
        public_url, private_url = await start(runner, cfg, listeners, tls, reuse_port=False)
        return cls(app, runner, ApiClient(public_url, app=app), ApiClient(private_url, default=default, app=app))

    async def close(self) -> None:
        await self.public.close()
        await self.private.close()
        await self.runner.cleanup()
