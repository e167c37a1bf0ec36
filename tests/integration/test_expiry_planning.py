"""Expiry planning where operators look: /metrics (days left per CA generation and responder), the
detailed health (in words within 180 days of a rollover being due)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

from ca_core.clock import FixedClock
from ca_core.expiry import LONGEST_END_ENTITY
from tests.tls_clients import TestServers


def _sample(text: str, name: str, ca: str, generation: int) -> float:
    m = re.search(r'^%s\{ca="%s",generation="%d"\} ([0-9.-]+)$' % (name, ca, generation), text, re.M)
    assert m, (name, text[-2000:])
    return float(m.group(1))


async def test_metrics_count_the_days_left(http, rt):
    text = await (await http.get("/metrics")).text()
    issuer = rt.issuers.current("signing")
    now = dt.datetime.now(dt.timezone.utc)
    left = (issuer.not_after - now).total_seconds() / 86400
    assert abs(_sample(text, "shomei_ca_days_to_expiry", "signing", issuer.generation) - left) < 0.1
    due = (issuer.not_after - LONGEST_END_ENTITY - now).total_seconds() / 86400
    assert abs(_sample(text, "shomei_ca_days_to_rollover_due", "signing", issuer.generation) - due) < 0.1
    assert 0 < _sample(text, "shomei_ocsp_responder_days_to_expiry", "auth", rt.issuers.current("auth").generation) <= 30


async def test_health_says_so_within_180_days(rt, tls, terminal):
    issuer = rt.issuers.current("auth")
    at = issuer.not_after - LONGEST_END_ENTITY - dt.timedelta(days=100)
    servers = await TestServers.start(dataclasses.replace(rt, clock=FixedClock(at)), tls, default=terminal.ssl)
    try:
        body = await (await servers.private.get("/healthz")).json()
        assert any(w.startswith(f"CA auth g{issuer.generation}: rollover due in 100 days")
                   and "shomei ca rollover --ca auth" in w for w in body.get("warnings", [])), body
        public = await (await servers.public.get("/healthz")).json()
        assert public == {"status": "ok"}  # the public listener says nothing more
    finally:
        await servers.close()


async def test_no_warning_years_ahead(http):
    body = await (await http.get("/healthz")).json()
    assert not [w for w in body.get("warnings", []) if "rollover" in w]
