"""TLS contexts of the private listener: the server's (client certificate required) and a client's
(the feed import command, tools and tests)."""
from __future__ import annotations

import ssl


def server_context(cert_file, key_file, client_ca_file) -> ssl.SSLContext:
    """TLS 1.2+, the server's certificate chain, and a client certificate of ``client_ca_file`` required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.load_verify_locations(cafile=str(client_ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca_file, cert_file=None, key_file=None) -> ssl.SSLContext:
    """Trusting the operations CA (``ca_file``) for the server, presenting a client certificate if given."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_file:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx
