"""The token's session lost under a running service (a token reset, an HSM failover): the next request
logs in again and succeeds, without a restart, and /metrics counts it."""
from __future__ import annotations

import re

from tests.helpers import issue, issue_body


async def _relogins(http) -> float:
    text = await (await http.get("/metrics")).text()
    m = re.search(r"^shomei_hsm_relogins_total ([0-9.]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_a_lost_token_session_is_opened_again(http, rt, terminal, keys):
    before = await _relogins(http)
    signer = rt.signer
    await signer._run(lambda: signer._session.close())  # the token drops our session (real C_CloseSession)
    data = await issue(http, terminal, issue_body(keys, kinds=("auth",)))
    assert data["certificates"][0]["kind"] == "auth"
    assert await _relogins(http) == before + 1
    health = await (await http.get("/healthz")).json()
    assert health["checks"]["token"] == "ok"
