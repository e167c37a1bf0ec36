"""Status truth, proven by random sequences: a hypothesis state machine drives the real service over
HTTP (its own PostgreSQL database, the session's SoftHSM token, a clock the test moves) with every
kind of event, and after every step checks that OCSP, the CRLs (full, and full+delta as a relying
party combines them), the online window's validity check and the window's answers all agree with the
reference model of the rules (tests/model/reference.py).

`make test` runs a bounded number of sequences (SHOMEI_MODEL_EXAMPLES, default 200, derandomized so
CI is repeatable); `make soak` runs thousands with fresh randomness. A failure shrinks to a minimal
sequence, which hypothesis prints as the steps to replay; it becomes a regression test in
tests/integration/test_status_truth.py.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import shutil
import threading
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ca_core.clock import FixedClock
from crl_publisher.publisher import Publisher, Target, output_dir
from plumbing.auth import ClientCache
from plumbing.runtime import IssuerDirectory, Runtime
from plumbing.status_channel import StatusChannel
from revocation import online_client
from storage import db
from tests.helpers import KeyPool, csr_pem, resident
from tests.model.reference import FEED, WINDOW_REASONS, Cert, Model
from tests.ocsp_helpers import check_response, request_der

SOAK = os.environ.get("SHOMEI_MODEL_SOAK") == "1"
EXAMPLES = int(os.environ.get("SHOMEI_MODEL_EXAMPLES", "3000" if SOAK else "200"))
APPLICANT = {"name": "山田　花子", "address": "東京都千代田区千代田１番１号", "birth_date": "319850412", "sex": "2"}
RESET = ("TRUNCATE certificate, revocation, issuance, window_request, feed_event, free_reissue, online_nonce,"
         " crl, crl_content, crl_content_ref, crl_number, crl_partition, ocsp_response_cache, audit_log")
FLAG = {1: x509.ReasonFlags.key_compromise, 3: x509.ReasonFlags.affiliation_changed,
        4: x509.ReasonFlags.superseded, 5: x509.ReasonFlags.cessation_of_operation,
        6: x509.ReasonFlags.certificate_hold}


class Service:
    """The service in a thread of its own (its own event loop), called synchronously by the machine."""

    def __init__(self, rt, pg_url: str, tmp: Path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="model-service")
        self.thread.start()
        self.clock = FixedClock(dt.datetime.now(dt.timezone.utc))
        self.tmp = tmp
        self.run(self._start(rt, pg_url))

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, session_rt, pg_url: str) -> None:
        from shomei.app import make_app
        from shomei.credentials import ensure_tls_files
        from shomei.listeners import Listeners, start
        from shomei.operations import run_ceremony
        from tests.tls_clients import make_credential

        name = "shomei_model_" + secrets.token_hex(4)
        admin = await asyncpg.connect(pg_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        self.url = pg_url.rsplit("/", 1)[0] + "/" + name
        await asyncio.to_thread(db.migrate, self.url)
        base = session_rt.cfg
        # Responder certificates outlive the sequences' time travel (a deployment renews them hourly).
        cas = base.ca.replace(signing=base.ca.signing.replace(responder_validity_days=4000),
                              auth=base.ca.auth.replace(responder_validity_days=4000))
        self.port = await asyncio.to_thread(_free_port)
        cfg = base.replace(database_url=self.url, ca=cas, var_dir=str(self.tmp / "var"),
                           server=base.server.replace(public_base_url=f"http://127.0.0.1:{self.port}"),
                           crl=base.crl.replace(output_dir=str(self.tmp / "crl")))
        self.pool = await db.create_pool(self.url, max_size=8)
        # The session's token session (its PKCS#11 calls stay on its one thread, whichever loop asks).
        self.rt = Runtime(cfg=cfg, clock=self.clock, pool=self.pool, signer=session_rt.signer,
                          directory=IssuerDirectory(self.pool), resident_key=session_rt.resident_key,
                          clients=ClientCache(self.pool), status=StatusChannel(self.url, self.pool))
        await run_ceremony(self.rt)
        tls = await ensure_tls_files(self.rt)
        folder = self.tmp / "clients"
        self.terminal = await make_credential(self.rt, folder, kind="terminal", name="model-terminal",
                                              municipality_code="131016", operators=("clerk-model",))
        self.feed = await make_credential(self.rt, folder, kind="feed", name="model-feed")
        listeners = Listeners()
        self.runner = web.AppRunner(make_app(self.rt, listeners), access_log=None)
        await self.runner.setup()
        _public, private = await start(self.runner, cfg.replace(server=cfg.server.replace(
            port=self.port, private_port=0)), listeners, tls, reuse_port=False)
        self.http = aiohttp.ClientSession(f"http://127.0.0.1:{self.port}")  # the public listener
        self.private = aiohttp.ClientSession(private)
        self.publisher = Publisher.from_runtime(self.rt)
        self.issuers = {ca: x509.load_der_x509_certificate(self.rt.issuers.current(ca).certificate_der)
                        for ca in ("signing", "auth")}
        # Every sequence starts at the same instant (a day after the CAs were made, 03:00 UTC): outcomes
        # depend on time (renewal window, expiry), and hypothesis replays a sequence expecting the same.
        made = max(c.not_valid_before_utc for c in self.issuers.values())
        self.start = dt.datetime.combine(made.date() + dt.timedelta(days=1), dt.time(3), tzinfo=dt.timezone.utc)

    async def reset(self, at: dt.datetime) -> None:
        self.clock.at = at
        async with self.pool.acquire() as conn:
            await conn.execute(RESET)
        shutil.rmtree(output_dir(self.rt.cfg), ignore_errors=True)
        self.rt.status._set_state(self.rt.status.up)  # TRUNCATE notifies nobody: start from empty caches

    async def close(self) -> None:
        await self.http.close()
        await self.private.close()
        await self.runner.cleanup()
        await self.pool.close()

    def stop(self) -> None:
        self.run(self.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # -- HTTP ---------------------------------------------------------------------------------------
    async def post_json(self, path: str, body: dict, client, operator: bool = True):
        """A terminal's or the feed's request, on the private listener with its certificate."""
        kw = client.auth() if operator else {"ssl": client.ssl}
        async with self.private.post(path, json=body, **kw) as resp:
            return resp.status, await resp.json()

    async def post_der(self, path: str, der: bytes, ctype: str):
        async with self.http.post(path, data=der, headers={"Content-Type": ctype}) as resp:
            return resp.status, await resp.read()

    async def get(self, path: str):
        async with self.http.get(path) as resp:
            return resp.status, await resp.read()

    async def publish(self, kind: str) -> dict[str, object]:
        out = {}
        for ca in ("signing", "auth"):
            outcome = await self.publisher.publish(Target(self.rt.issuers.current(ca), "full", kind))
            out[ca] = outcome.published
        return out


def _free_port() -> int:
    from shomei.embedded import free_port
    return free_port()


@pytest.fixture(scope="module")
def service(rt, pg, tmp_path_factory):
    svc = Service(rt, pg.url, tmp_path_factory.mktemp("model"))
    yield svc
    svc.stop()


RESIDENTS = 3
DURATIONS = [dt.timedelta(seconds=1), dt.timedelta(minutes=20), dt.timedelta(days=1), dt.timedelta(days=30),
             dt.timedelta(days=100)]


class StatusMachine(RuleBasedStateMachine):
    svc: Service = None  # set by the test
    keys: "CardKeys" = None

    def __init__(self):
        super().__init__()
        self.model = Model()
        self.card_keys: dict[int, object] = {}  # serial -> the card's private key
        self.x509: dict[int, x509.Certificate] = {}
        self.residents = ["".join(secrets.choice("0123456789") for _ in range(11)) for _ in range(RESIDENTS)]
        self.published: dict[str, tuple] = {}  # ca -> (base CRL DER path, expected entries, thisUpdate)
        self.delta: dict[str, tuple] = {}
        self.svc.run(self.svc.reset(self.svc.start))

    @property
    def now(self) -> dt.datetime:
        return self.svc.clock.now()

    def _cert(self, data: st.DataObject, kinds=("signing", "auth")) -> Cert:
        # In the order they were issued (serials are random: an order by serial would make a replayed
        # sequence pick other certificates).
        certs = [c for c in self.model.certs.values() if c.kind in kinds]
        return data.draw(st.sampled_from(certs))

    def has_certs(self) -> bool:
        return bool(self.model.certs)

    # -- issuance -------------------------------------------------------------------------------------
    @initialize(who=st.integers(0, RESIDENTS - 1))
    def first_issue(self, who):
        self.issue(who, ("signing", "auth"), 3000, False)

    @rule(who=st.integers(0, RESIDENTS - 1), kinds=st.sampled_from([("signing", "auth"), ("signing",), ("auth",)]),
          card_days=st.sampled_from([45, 200, 3000]), card_replaced=st.booleans())
    def issue(self, who, kinds, card_days, card_replaced):
        code = self.residents[who]
        keys = dict(zip(kinds, self.keys.two()))
        body = {"request_id": "m-" + secrets.token_hex(8), "municipality_code": "131016", "resident_code": code,
                "resident": resident(), "card_expires_on": (self.now + dt.timedelta(days=card_days)).date().isoformat(),
                "card_replaced": card_replaced}
        for k in kinds:
            body[f"{k}_csr"] = csr_pem(keys[k])
        expected_ok = self.model.may_issue(code, kinds, card_replaced, self.now)
        status, answer = self.svc.run(self.svc.post_json("/v1/certificates", body, self.svc.terminal))
        if not expected_ok:
            assert (status, answer["error"]["code"]) == (409, "renewal_too_early"), answer
            return
        assert status == 201, answer
        new = []
        for item in answer["certificates"]:
            cert = x509.load_pem_x509_certificate(item["certificate"].encode())
            cert.verify_directly_issued_by(self.svc.issuers[item["kind"]])
            assert cert.not_valid_before_utc == self.now
            assert cert.not_valid_after_utc <= self.svc.issuers[item["kind"]].not_valid_after_utc
            self.card_keys[cert.serial_number] = keys[item["kind"]]
            self.x509[cert.serial_number] = cert
            new.append(Cert(cert.serial_number, item["kind"], code, cert.not_valid_before_utc,
                            cert.not_valid_after_utc))
        self.model.issued(code, new, self.now)

    # -- the window -----------------------------------------------------------------------------------
    def _target(self, data, by_serial: bool, kinds_choices):
        if by_serial:
            cert = self._cert(data)
            return cert, {"serial": format(cert.serial, "x")}
        who = data.draw(st.integers(0, RESIDENTS - 1))
        kinds = data.draw(st.sampled_from(kinds_choices))
        return (self.residents[who], kinds), {"resident_code": self.residents[who], "kinds": list(kinds)}

    def _window(self, path: str, body: dict, expected: tuple[int, str | None]):
        status, answer = self.svc.run(self.svc.post_json(path, {"request_id": "w-" + secrets.token_hex(8), **body},
                                                         self.svc.terminal))
        got = (status, answer["error"]["code"] if status >= 400 else None)
        assert got == expected, (path, body, answer)

    @precondition(has_certs)
    @rule(data=st.data(), by_serial=st.booleans(), reason=st.sampled_from(sorted(WINDOW_REASONS)))
    def window_revoke(self, data, by_serial, reason):
        target, body = self._target(data, by_serial, [("signing",), ("auth",), ("signing", "auth")])
        expected = self.model.window_revoke(target, reason, self.now)
        self._window("/v1/revocations", {**body, "reason": reason}, expected)

    @precondition(has_certs)
    @rule(data=st.data(), by_serial=st.booleans())
    def window_hold(self, data, by_serial):
        target, body = self._target(data, by_serial, [("signing",), ("auth",), ("signing", "auth")])
        self._window("/v1/holds", body, self.model.window_hold(target, self.now))

    @precondition(has_certs)
    @rule(data=st.data(), by_serial=st.booleans())
    def window_release(self, data, by_serial):
        target, body = self._target(data, by_serial, [("auth",)])
        self._window("/v1/holds/release", body, self.model.window_release(target))

    # -- the online window ------------------------------------------------------------------------------
    def _application(self, cert: Cert, procedure: str) -> bytes:
        der = self.x509[cert.serial].public_bytes(serialization.Encoding.DER)
        return online_client.build(procedure, der, online_client.key_signer(self.card_keys[cert.serial]), APPLICANT,
                                   issued_at=self.now)

    @precondition(has_certs)
    @rule(data=st.data(), replay=st.booleans())
    def online_revoke(self, data, replay):
        cert = self._cert(data)
        der = self._application(cert, "revocation")
        expected = self.model.online_revoke(cert, self.now)
        status, body = self.svc.run(self.svc.post_der("/v1/online/revocations", der, online_client.CONTENT_TYPE))
        code = None if status < 400 else _json(body)["error"]["code"]
        assert (status, code) == expected, _json(body)
        if replay:  # the same application again: its nonce was recorded only if it was accepted
            status, body = self.svc.run(self.svc.post_der("/v1/online/revocations", der, online_client.CONTENT_TYPE))
            code = _json(body)["error"]["code"]
            assert (status, code) == ((409, "replayed") if expected[0] == 202 else expected), code

    # -- the resident-register feed ------------------------------------------------------------------------
    @rule(who=st.integers(0, RESIDENTS - 1), kind=st.sampled_from(sorted(FEED)),
          before=st.sampled_from([dt.timedelta(days=400), dt.timedelta(hours=1), dt.timedelta(0),
                                  -dt.timedelta(seconds=1)]), duplicate=st.booleans())
    def feed_event(self, who, kind, before, duplicate):
        occurred = self.now - before
        event = {"event_id": "e-" + secrets.token_hex(8), "resident_code": self.residents[who], "kind": kind,
                 "occurred_at": occurred.isoformat()}
        batch = [event, event] if duplicate else [event]
        expected = [self.model.feed(e["event_id"], self.residents[who], kind, occurred, self.now) for e in batch]
        status, answer = self.svc.run(self.svc.post_json("/v1/residency-events", {"events": batch}, self.svc.feed,
                                                         operator=False))
        assert status == 200, answer
        assert [r["outcome"] for r in answer["results"]] == expected, (event, answer)

    # -- CRLs --------------------------------------------------------------------------------------------
    @rule()
    def publish_complete_crls(self):
        self.model.crl_issued(self.now)
        published = self.svc.run(self.svc.publish("base"))
        for ca, crl in published.items():
            assert crl is not None and crl.this_update == self.now
            self.published[ca] = (self.model.crl_entries(ca, self.now), self.now)
            self.delta.pop(ca, None)

    @precondition(lambda self: bool(self.published))
    @rule()
    def publish_delta_crls(self):
        self.model.crl_issued(self.now)
        published = self.svc.run(self.svc.publish("delta"))
        for ca, crl in published.items():
            assert crl is not None
            self.delta[ca] = (self.model.crl_entries(ca, self.now), self.now)

    # -- time --------------------------------------------------------------------------------------------
    @rule(step=st.sampled_from(DURATIONS))
    def time_passes(self, step):
        self.svc.clock.at = self.svc.clock.at + step

    # -- what must agree after every step ------------------------------------------------------------------
    @invariant()
    def ocsp_agrees(self):
        for cert in self.model.certs.values():
            issuer = self.svc.issuers[cert.kind]
            status, body = self.svc.run(self.svc.post_der("/ocsp", request_der(self.x509[cert.serial], issuer),
                                                          "application/ocsp-request"))
            resp = check_response(body, issuer.public_bytes(serialization.Encoding.DER))
            if cert.status == "valid":
                assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD, (cert, resp.revocation_reason)
            else:
                assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED, cert
                assert resp.revocation_time_utc == cert.since, cert
                assert resp.revocation_reason == FLAG.get(cert.reason), (cert, resp.revocation_reason)

    @invariant()
    def validity_checks_agree(self):
        for cert in self.model.certs.values():
            status, body = self.svc.run(self.svc.post_der("/v1/online/validity-checks",
                                                          self._application(cert, "validity_check"),
                                                          online_client.CONTENT_TYPE))
            answer = _json(body)
            expected = self.model.validity_check(cert, self.now)
            if expected == "certificate_expired":
                assert (status, answer["error"]["code"]) == (422, expected), answer
            else:
                assert status == 200 and answer["result"] == expected, (cert, answer)
                if cert.status == "held" and expected == "revoked":
                    assert answer.get("reason") == "certificate_hold"

    @invariant()
    def crls_agree(self):
        for ca, (expected, this_update) in self.published.items():
            base = self._crl(f"/crl/{ca}/full.crl", ca, this_update)
            assert _entries(base) == expected, (ca, _entries(base), expected)
            if ca in self.delta:
                now_expected, delta_update = self.delta[ca]
                delta = self._crl(f"/crl/{ca}/delta.crl", ca, delta_update)
                view = _combine(_entries(base), delta)
                alive = {s for s, c in self.model.certs.items() if c.kind == ca and c.not_after >= delta_update}
                assert {s: v for s, v in view.items() if s in alive} == now_expected, (ca, view, now_expected)

    def _crl(self, path: str, ca: str, this_update: dt.datetime) -> x509.CertificateRevocationList:
        status, der = self.svc.run(self.svc.get(path))
        assert status == 200, path
        crl = x509.load_der_x509_crl(der)
        assert crl.is_signature_valid(self.svc.issuers[ca].public_key())
        assert crl.last_update_utc == this_update
        return crl


def _json(body: bytes) -> dict:
    import json
    return json.loads(body)


def _entry(revoked) -> tuple:
    exts = {e.oid: e.value for e in revoked.extensions}
    reason = exts.get(x509.CRLReason.oid)
    invalidity = exts.get(x509.InvalidityDate.oid)
    return ({v: k for k, v in FLAG.items()}.get(reason.reason) if reason else None, revoked.revocation_date_utc,
            invalidity.invalidity_date_utc if invalidity else None)


def _entries(crl) -> dict[int, tuple]:
    return {r.serial_number: _entry(r) for r in crl}


def _combine(base: dict[int, tuple], delta) -> dict[int, tuple]:
    """The status a relying party derives from a complete CRL and its delta (RFC 5280 5.2.4, 6.3.3):
    a delta entry replaces the base's; removeFromCRL removes it."""
    view = dict(base)
    for revoked in delta:
        exts = {e.oid: e.value for e in revoked.extensions}
        reason = exts.get(x509.CRLReason.oid)
        if reason is not None and reason.reason == x509.ReasonFlags.remove_from_crl:
            view.pop(revoked.serial_number, None)
        else:
            view[revoked.serial_number] = _entry(revoked)
    return view


class CardKeys:
    """Card key pairs made once and handed out in turn (two different ones per request)."""

    def __init__(self, n: int = 6):
        pool = KeyPool()
        self._keys = [pool.new() for _ in range(n)]
        self._next = 0

    def two(self):
        self._next = (self._next + 2) % len(self._keys)
        return self._keys[self._next], self._keys[self._next + 1]


def test_status_truth_model(service):
    StatusMachine.svc = service
    StatusMachine.keys = CardKeys()
    run = StatusMachine.TestCase
    run.settings = settings(max_examples=EXAMPLES, stateful_step_count=12, deadline=None, derandomize=not SOAK,
                            suppress_health_check=list(HealthCheck), print_blob=True)
    run().runTest()
