"""The two listeners of one process, serving one application.

- public (plain HTTP, as RFC 5019 and CRL distribution points expect): what relying parties need:
  CRLs, OCSP, CA certificates, a bare health status; and the online window, whose applications are
  authenticated by the resident's own signature inside them, not by the connection;
- private (HTTPS, TLS 1.2 or later, a client certificate of the operations CA required at the
  handshake): terminals, the call centre, the resident-register feed, and operations (/metrics,
  detailed /healthz). Handlers marked ``plumbing.http.private`` answer 404 on the public listener.

The client's identity is the serial of the certificate it presented. Behind a TLS-terminating proxy
(server.private_tls = false) it is the proxy's X-Client-Certificate-Serial header, believed only from
the addresses in server.trusted_proxies.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiohttp import web
from asn1crypto import x509 as ax509

from ca_core.config import Config
from ca_core.errors import NotFound
from ca_core.serials import serial_bytes
from ocsp_responder.fastpath import FastPathSite
from ocsp_responder.http import SERVICE as OCSP_SERVICE
from plumbing.auth import CLIENT_SERIAL
from plumbing.http import is_private
from plumbing.tls import server_context

log = logging.getLogger(__name__)

ON_PRIVATE = web.RequestKey("on_private_listener", bool)
PROXY_SERIAL_HEADER = "X-Client-Certificate-Serial"
KEEPALIVE_SECONDS = 15  # an idle keep-alive connection is closed after this (aiohttp's default: 75 s)


@dataclass
class Listeners:
    """The ports of this process's private listener (filled in when its sites start)."""
    private_ports: set[int] = field(default_factory=set)
    trusted_proxies: frozenset[str] = frozenset()


def _peer_serial(request: web.Request, trusted: frozenset[str]) -> bytes | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    if ssl_object is not None:
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            return None
        return serial_bytes(ax509.Certificate.load(der)["tbs_certificate"]["serial_number"].native)
    if request.remote in trusted:
        value = request.headers.get(PROXY_SERIAL_HEADER, "").replace(":", "").strip()
        if 0 < len(value) <= 64:
            try:
                return serial_bytes(int(value, 16))
            except ValueError:
                return None
    return None


def listener_check(listeners: Listeners):
    """``admit(request)`` for plumbing.http.make_error_middleware: on the private listener, put the client
    certificate's serial on the request; on the public one, refuse private handlers (404)."""
    private_ports = listeners.private_ports

    def admit(request: web.Request) -> None:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport else None
        if sockname and sockname[1] in private_ports:
            request[ON_PRIVATE] = True
            serial = _peer_serial(request, listeners.trusted_proxies)
            if serial is not None:
                request[CLIENT_SERIAL] = serial
        elif is_private(request.match_info.handler):
            raise NotFound("not served on the public listener; terminals, the feed and operations use the "
                           "private listener (HTTPS with a client certificate)", code="private_listener_only")

    return admit


async def start(runner: web.AppRunner, cfg: Config, listeners: Listeners, tls_files, *,
                reuse_port: bool = True) -> tuple[str, str]:
    """Start both sites of an already set-up runner; returns (public URL, private URL)."""
    srv = cfg.server
    responder = runner.app.get(OCSP_SERVICE) if runner.app is not None else None
    if responder is not None and not responder.verifier_mode:
        # OCSP's two plain request shapes skip the framework; everything else is aiohttp's as before.
        public = FastPathSite(runner, responder, srv.host, srv.port, reuse_port=reuse_port, backlog=2048,
                              keepalive=KEEPALIVE_SECONDS)
    else:
        public = web.TCPSite(runner, srv.host, srv.port, reuse_port=reuse_port, backlog=2048)
    await public.start()
    context = server_context(tls_files.cert, tls_files.key, tls_files.client_ca) if srv.private_tls else None
    private = web.TCPSite(runner, srv.private_host, srv.private_port, ssl_context=context,
                          reuse_port=reuse_port, backlog=2048)
    await private.start()
    listeners.trusted_proxies = frozenset(srv.trusted_proxies)
    public_port = public._server.sockets[0].getsockname()[1]
    private_port = private._server.sockets[0].getsockname()[1]
    listeners.private_ports.add(private_port)
    scheme = "https" if context else "http"
    return f"http://{srv.host}:{public_port}", f"{scheme}://{srv.private_host}:{private_port}"
