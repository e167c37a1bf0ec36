"""Authority follows the resident's municipality: a terminal acts (revoke, hold, release, a new card's
supersede) only on certificates issued in its municipality or of residents who have since moved in, as
the register reports; the call centre (national) may place holds anywhere and do nothing else. Outside
its scope a client gets 403 with a stable code, and nothing changes."""
from __future__ import annotations

import datetime as dt

import pytest

from tests.helpers import issue_body
from tests.integration.revocation_support import new_holder, post, rid, rows_of, status_of
from tests.tls_clients import make_credential


@pytest.fixture(scope="module")
async def shinjuku(rt, stack_dir, tls):
    return await make_credential(rt, stack_dir / "clients", kind="terminal", name=f"shinjuku-{rid()}",
                                 municipality_code="131041", operators=("shinjuku-clerk",))


@pytest.fixture(scope="module")
async def call_centre(rt, stack_dir, tls):
    return await make_credential(rt, stack_dir / "clients", kind="national", name=f"call-centre-{rid()}",
                                 operators=("night-desk",))


async def _moved_to(http, feed, h, code: str) -> dict:
    occurred = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).replace(microsecond=0).isoformat()
    resp = await http.post("/v1/residency-events", ssl=feed.ssl,
                           json={"events": [{"event_id": rid(), "resident_code": h.code, "kind": "moved",
                                             "occurred_at": occurred, "municipality_code": code}]})
    return await resp.json()


async def test_a_terminal_of_another_municipality_is_refused_and_nothing_changes(http, rt, terminal, keys, shinjuku):
    h = await new_holder(http, terminal, keys)  # issued in Chiyoda-ku (131016)
    for path, body in (("/v1/revocations", {"serial": h.hex("auth"), "reason": "holder_request"}),
                       ("/v1/holds", {"serial": h.hex("auth")}),
                       ("/v1/holds", {"resident_code": h.code}),
                       ("/v1/revocations", {"resident_code": h.code, "kinds": ["signing"], "reason": "death"})):
        st, answer = await post(http, path, shinjuku, {"request_id": rid(), **body})
        assert (st, answer["error"]["code"]) == (403, "out_of_scope"), (path, answer)
    st, _ = await post(http, "/v1/holds", terminal, {"request_id": rid(), "serial": h.hex("auth")})
    assert st == 201  # its own municipality may
    st, answer = await post(http, "/v1/holds/release", shinjuku, {"request_id": rid(), "serial": h.hex("auth")})
    assert (st, answer["error"]["code"]) == (403, "out_of_scope")
    assert await status_of(rt, h.serial("auth")) == "held" and await status_of(rt, h.serial("signing")) == "valid"
    assert len(await rows_of(rt, h.serial("auth"))) == 1


async def test_after_a_move_in_the_new_municipality_may_act(http, rt, terminal, keys, shinjuku, feed):
    h = await new_holder(http, terminal, keys, kinds=("auth",))
    body = await _moved_to(http, feed, h, "131041")
    assert body["results"][0]["outcome"] in ("applied", "no_certificate")  # auth is not revoked by a move
    st, answer = await post(http, "/v1/holds", shinjuku, {"request_id": rid(), "serial": h.hex("auth")})
    assert st == 201, answer
    st, answer = await post(http, "/v1/holds/release", shinjuku, {"request_id": rid(), "serial": h.hex("auth")})
    assert st == 201, answer
    # and a new card there supersedes the old certificate
    resp = await http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",), code=h.code,
                                                              municipality_code="131041", card_replaced=True),
                           **shinjuku.auth())
    assert resp.status == 201, await resp.text()
    assert await status_of(rt, h.serial("auth")) == "revoked"


async def test_a_new_card_elsewhere_does_not_supersede_without_a_move(http, rt, terminal, keys, shinjuku):
    h = await new_holder(http, terminal, keys, kinds=("auth",))
    resp = await http.post("/v1/certificates", json=issue_body(keys, kinds=("auth",), code=h.code,
                                                              municipality_code="131041", card_replaced=True),
                           **shinjuku.auth())
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "out_of_scope"
    assert await status_of(rt, h.serial("auth")) == "valid"


async def test_the_call_centre_may_hold_anywhere_and_nothing_else(http, rt, terminal, keys, call_centre):
    h = await new_holder(http, terminal, keys)
    st, answer = await post(http, "/v1/holds", call_centre, {"request_id": rid(), "resident_code": h.code})
    assert st == 201, answer
    assert await status_of(rt, h.serial("auth")) == "held" and await status_of(rt, h.serial("signing")) == "held"
    for path, body in (("/v1/revocations", {"serial": h.hex("auth"), "reason": "holder_request"}),
                       ("/v1/holds/release", {"serial": h.hex("auth")})):
        st, answer = await post(http, path, call_centre, {"request_id": rid(), **body})
        assert (st, answer["error"]["code"]) == (403, "wrong_client_kind"), answer
    resp = await http.post("/v1/certificates", json=issue_body(keys), **call_centre.auth())
    assert resp.status == 403
    assert await status_of(rt, h.serial("auth")) == "held"


async def test_a_move_names_a_valid_municipality(http, feed, terminal, keys):
    h = await new_holder(http, terminal, keys, kinds=("auth",))
    body = await _moved_to(http, feed, h, "131042")  # wrong check digit
    assert body["results"][0] == {"event_id": body["results"][0]["event_id"], "outcome": "rejected",
                                  "reason": "invalid_municipality_code"}


async def test_operators_belong_to_their_municipality(http, rt, terminal, keys, shinjuku, call_centre):
    """A clerk registered in Chiyoda-ku cannot be named by Shinjuku's terminal, nor a municipal clerk by
    the call centre: 403 unknown_operator, nothing changes."""
    h = await new_holder(http, terminal, keys, kinds=("auth",))
    for client, operator in ((shinjuku, "clerk-01"), (call_centre, "clerk-01"), (terminal, "night-desk")):
        st, answer = await post(http, "/v1/holds", client, {"request_id": rid(), "serial": h.hex("auth")},
                                operator=operator)
        assert (st, answer["error"]["code"]) == (403, "unknown_operator"), (operator, answer)
    assert await status_of(rt, h.serial("auth")) == "valid"
