"""IssuanceService.issue_batch: every request of a batch is issued as a request of its own would be, its
outcome in its place; checked against the certificates, the database and a reference model of random
batches."""
from __future__ import annotations

import dataclasses

from cryptography import x509
from hypothesis import HealthCheck, given, settings, strategies as st

from ca_core import errors
from ca_core.kinds import KINDS
from issuance.service import IssueResult
from tests.helpers import resident_code
from tests.services.support import OPERATOR, T0, issue_holder, issue_request, revocation_rows, status, totals


def _keys(parts, kinds=KINDS) -> dict:
    return {k: parts.card_keys.next() for k in kinds}


async def _issue_rows(parts, request_id: str) -> list:
    async with parts.pool.acquire() as conn:
        return await conn.fetch(
            "SELECT a.action, a.serial, a.operator_id, a.details->>'kind' AS kind FROM audit_log a"
            " WHERE a.request_id = $1 ORDER BY a.seq", request_id)


async def test_a_batch_issues_every_request_with_its_own_records(issuance, parts):
    kinds_of = [KINDS, ("auth",), ("signing",), KINDS]
    reqs = [issue_request(_keys(parts, kinds)) for kinds in kinds_of]
    signatures, rows = parts.signer.signatures, await totals(parts)
    outcomes = await issuance.issue_batch(parts.terminal, OPERATOR, reqs)
    assert all(isinstance(o, IssueResult) and o.created for o in outcomes)
    assert parts.signer.signatures - signatures == 6
    after = await totals(parts)
    assert after["certificate"] - rows["certificate"] == 6
    assert after["issuance"] - rows["issuance"] == 4
    assert after["audit_log"] - rows["audit_log"] == 6
    serials = set()
    for req, outcome, kinds in zip(reqs, outcomes, kinds_of):
        assert [c.kind for c in outcome.certificates] == list(kinds)
        for issued in outcome.certificates:
            cert = x509.load_der_x509_certificate(issued.der)
            cert.verify_directly_issued_by(parts.ca(issued.kind))
            assert cert.serial_number == issued.serial
            assert cert.not_valid_before_utc == T0
            assert cert.public_key().public_numbers() == x509.load_pem_x509_csr(
                req.csr(issued.kind).encode()).public_key().public_numbers()
            serials.add(issued.serial)
        audit = await _issue_rows(parts, req.request_id)
        assert sorted((r["action"], r["kind"], r["operator_id"]) for r in audit) == \
            sorted(("issue", k, OPERATOR) for k in kinds)
        assert {int.from_bytes(r["serial"], "big") for r in audit} == {c.serial for c in outcome.certificates}
        # the request answers the same certificates when sent again on its own
        again = await issuance.issue(parts.terminal, OPERATOR, req)
        assert again.created is False
        assert [c.der for c in again.certificates] == [c.der for c in outcome.certificates]
    assert len(serials) == 6


async def test_each_outcome_in_its_place_and_only_the_issued_are_recorded(issuance, parts):
    earlier = issue_request(_keys(parts))
    await issuance.issue(parts.terminal, OPERATOR, earlier)
    holder = await issue_holder(issuance, parts, kinds=("auth",))  # renewed below with a new card
    keeper = await issue_holder(issuance, parts, kinds=("auth",))  # asks too early below
    twice = resident_code()
    reqs = [
        issue_request(_keys(parts)),                                                     # 0 issued
        issue_request(_keys(parts), municipality_code="271004"),                         # 1 not its municipality
        earlier,                                                                         # 2 replay
        dataclasses.replace(earlier, card_expires_on="2030-01-01"),                      # 3 another body
        issue_request(_keys(parts, ("auth",)), code=holder.code, card_replaced=True),    # 4 new card: supersedes
        issue_request(_keys(parts, ("auth",)), code=keeper.code),                        # 5 renewal too early
        issue_request(_keys(parts), code=twice),                                         # 6 issued
        issue_request(_keys(parts), code=twice),                                         # 7 same resident: refused
    ]
    signatures, rows = parts.signer.signatures, await totals(parts)
    outcomes = await issuance.issue_batch(parts.terminal, OPERATOR, reqs)

    def code(o):
        return o.code if isinstance(o, errors.ShomeiError) else ("created" if o.created else "replayed")

    assert [code(o) for o in outcomes[:6]] == [
        "created", "municipality_mismatch", "replayed", "idempotency_conflict", "created", "renewal_too_early"]
    # the two requests for one resident are issued as concurrent requests are: one of them, either
    assert sorted(code(o) for o in outcomes[6:]) == ["concurrent_issuance", "created"]
    issued, refused = (6, 7) if code(outcomes[6]) == "created" else (7, 6)
    assert isinstance(outcomes[1], errors.Forbidden) and isinstance(outcomes[refused], errors.Conflict)
    # 0, 4, 6 and 7 were signed (7 was refused by the database: one live certificate of a kind per resident)
    assert parts.signer.signatures - signatures == 2 + 1 + 2 + 2
    after = await totals(parts)
    assert after["certificate"] - rows["certificate"] == 5
    assert after["issuance"] - rows["issuance"] == 3
    assert after["revocation"] - rows["revocation"] == 1
    assert await status(parts, holder.serial("auth")) == "revoked"
    assert [r["reason"] for r in await revocation_rows(parts, holder.serial("auth"))] == [4]  # superseded
    assert await status(parts, keeper.serial("auth")) == "valid"
    assert await _issue_rows(parts, reqs[refused].request_id) == []
    async with parts.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM certificate WHERE resident_hash ="
                                   " (SELECT resident_hash FROM certificate WHERE serial = $1)",
                                   outcomes[issued].certificates[0].serial.to_bytes(16, "big")) == 2


async def test_a_token_failure_refuses_only_the_request_it_hit(issuance, parts):
    reqs = [issue_request(_keys(parts)) for _ in range(4)]
    rows = await totals(parts)
    parts.signer.fail_next = True
    outcomes = await issuance.issue_batch(parts.terminal, OPERATOR, reqs)
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, errors.ShomeiError)]
    assert len(failed) == 1 and outcomes[failed[0]].code == "hsm_unavailable"
    assert all(o.created for i, o in enumerate(outcomes) if i not in failed)
    assert (await totals(parts))["certificate"] - rows["certificate"] == 6
    assert await _issue_rows(parts, reqs[failed[0]].request_id) == []
    # the batch sent again: the three answer their certificates again, the fourth is issued now
    again = await issuance.issue_batch(parts.terminal, OPERATOR, reqs)
    assert [o.created for o in again] == [i in failed for i in range(4)]
    assert (await totals(parts))["certificate"] - rows["certificate"] == 8


# -- a reference model of random batches -----------------------------------------------------------------
# Kinds of request: a new resident; a repeat of an earlier request (same body); an earlier request_id with
# another body; a new card for a resident holding certificates; a renewal asked too early; a request for
# another municipality. A resident appears at most once in a batch.
ACTS = ("new", "repeat", "other_body", "new_card", "too_early", "foreign")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.sampled_from(ACTS), min_size=1, max_size=6), min_size=1, max_size=3),
       picks=st.randoms(use_true_random=False))
async def test_random_batches_match_the_model(issuance, parts, batches, picks):
    sent: list = []          # requests issued so far (repeatable)
    live: dict = {}          # resident code -> serials of its valid auth certificates (the model)
    for acts in batches:
        reqs, expected, used = [], [], set()
        for act in acts:
            holders = [c for c in live if c not in used]
            earlier = [r for r in sent if r.resident_code not in used]
            if act in ("repeat", "other_body") and earlier:
                old = picks.choice(earlier)
                req = old if act == "repeat" else dataclasses.replace(old, card_expires_on="2031-01-01")
                want = "replayed" if act == "repeat" else "idempotency_conflict"
            elif act in ("new_card", "too_early") and holders:
                code = picks.choice(holders)
                req = issue_request(_keys(parts, ("auth",)), code=code, card_replaced=act == "new_card")
                want = "created" if act == "new_card" else "renewal_too_early"
            elif act == "foreign":
                req, want = issue_request(_keys(parts, ("auth",)), municipality_code="271004"), "municipality_mismatch"
            else:
                req, want = issue_request(_keys(parts, ("auth",))), "created"
            if req.request_id in {r.request_id for r in reqs}:
                continue  # the HTTP layer refuses a batch naming a request_id twice
            used.add(req.resident_code)
            reqs.append(req)
            expected.append(want)
        outcomes = await issuance.issue_batch(parts.terminal, OPERATOR, reqs)
        got = [o.code if isinstance(o, errors.ShomeiError) else ("created" if o.created else "replayed")
               for o in outcomes]
        assert got == expected
        for req, outcome, want in zip(reqs, outcomes, expected):
            if want == "created":
                sent.append(req)
                live[req.resident_code] = {outcome.certificates[0].serial}
        # the database agrees with the model: each resident's valid auth certificate is the model's one
        async with parts.pool.acquire() as conn:
            for code, serials in live.items():
                from ca_core.resident import resident_hash

                rows = await conn.fetch("SELECT serial FROM certificate WHERE resident_hash = $1 AND kind = 'auth'"
                                        " AND status = 'valid'", resident_hash(parts.resident_key, code))
                assert {int.from_bytes(r["serial"], "big") for r in rows} == serials
