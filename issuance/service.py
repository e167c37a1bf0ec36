"""The issuance use case: validate everything, sign with the token, then record durably.

Order matters: every check runs before the token signs (a signature is the scarce resource), and the
certificate rows, the superseding revocations and the audit records are written in one transaction
before the answer. A certificate that was signed but whose transaction failed never leaves the service.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Histogram

from ca_core import errors
from ca_core.ca import IssuerSource
from ca_core.clock import JST, Clock
from ca_core.config import IssuanceConfig
from ca_core.kinds import AUTH, KINDS, SIGNING
from ca_core.csr import check_csr
from ca_core.municipality import prefecture_romaji, validate_code
from ca_core.profiles import (CertificateProfile, CertificateTemplate, assemble_certificate, end_entity_subject,
                              partition_name, validity)
from ca_core.records import CertificateRecord
from ca_core.resident import BasicFour, check_resident_code, check_signing_eligibility, resident_hash
from ca_core.revocation import Reason, encode_entry
from ca_core.serials import new_serial, serial_bytes, serial_hex
from hsm.signer import Signer
from storage import audit, certificates as cert_store, issuance as issuance_store, revocations as rev_store
from plumbing.authority import check_scope
from plumbing.status_channel import StatusSync, no_sync
from storage.db import unavailable_when_down

log = logging.getLogger(__name__)

_RECORDS_AT_ONCE = 4  # transactions a batch runs side by side for the requests it records one by one

ISSUED = Counter("shomei_issuance_total", "Issuance requests by kind and result", ["kind", "result"])
ISSUE_LATENCY = Histogram("shomei_issuance_seconds", "Issuance request latency by kind", ["kind"],
                          buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))


@dataclass(frozen=True)
class IssueRequest:
    """A validated-for-shape issuance request (the JSON body)."""

    request_id: str
    municipality_code: str
    resident_code: str
    resident: BasicFour
    card_expires_on: str
    signing_csr: str | None
    auth_csr: str | None
    adult_ward: bool = False
    card_replaced: bool = False  # a new card: the old certificates are superseded whatever their expiry

    @property
    def kinds(self) -> list[str]:
        """The kinds asked for (a CSR given), in the order of KINDS."""
        return [k for k in KINDS if self.csr(k) is not None]

    def csr(self, kind: str) -> str | None:
        return self.signing_csr if kind == SIGNING else self.auth_csr

    def body_hash(self) -> bytes:
        canonical = json.dumps(self.__dict__ | {"resident": self.resident.__dict__}, sort_keys=True,
                               ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).digest()


@dataclass(frozen=True)
class IssuedCertificate:
    kind: str
    serial: int
    der: bytes
    not_after: dt.datetime

    @classmethod
    def of(cls, rec: CertificateRecord) -> "IssuedCertificate":
        return cls(rec.kind, rec.serial, rec.der, rec.not_after)


@dataclass(frozen=True)
class IssueResult:
    created: bool  # False: a replay of an earlier identical request
    certificates: list[IssuedCertificate]


class IssuanceService:
    """Issuance, built from its parts: a connection pool, a Signer, a clock, the CA generations, the
    certificate profiles, its settings and the key resident codes are hashed with."""

    def __init__(self, *, pool, signer: Signer, clock: Clock, issuers: IssuerSource,
                 profiles: dict[str, CertificateProfile], settings: IssuanceConfig, resident_key: bytes,
                 status_sync: StatusSync = no_sync):
        self.pool = pool
        self.signer = signer
        self.clock = clock
        self.issuers = issuers
        self.profiles = profiles
        self.settings = settings
        self.resident_key = resident_key
        self.status_sync = status_sync
        self._templates: dict[int, CertificateTemplate] = {}

    @classmethod
    def from_runtime(cls, rt) -> "IssuanceService":
        return cls(pool=rt.pool, signer=rt.signer, clock=rt.clock, issuers=rt.directory,
                   profiles={kind: CertificateProfile.from_config(rt.cfg, kind) for kind in KINDS},
                   settings=rt.cfg.issuance, resident_key=rt.resident_key, status_sync=rt.status.sync)

    def _template(self, issuer) -> CertificateTemplate:
        template = self._templates.get(issuer.db_id)
        if template is None:
            template = self._templates[issuer.db_id] = CertificateTemplate(self.profiles[issuer.ca_id], issuer)
        return template

    def _validate(self, client, req: IssueRequest, now: dt.datetime):
        today = now.astimezone(JST).date()
        validate_code(req.municipality_code)
        if client.municipality_code != req.municipality_code:
            raise errors.Forbidden(f"this terminal belongs to municipality {client.municipality_code} and may not "
                                   f"issue for {req.municipality_code}", field="municipality_code",
                                   code="municipality_mismatch")
        check_resident_code(req.resident_code)
        birth = req.resident.validate(today)
        try:
            card_expiry = dt.date.fromisoformat(req.card_expires_on)
        except (TypeError, ValueError):
            raise errors.InvalidRequest("card_expires_on must be a date (YYYY-MM-DD)", field="card_expires_on",
                                        code="invalid_date") from None
        if card_expiry < today:
            raise errors.PolicyViolation("the card has already expired", field="card_expires_on",
                                         code="card_expired")
        kinds = req.kinds
        if not kinds:
            raise errors.InvalidRequest("give signing_csr, auth_csr or both", field="signing_csr",
                                        code="missing_csr")
        if SIGNING in kinds:
            check_signing_eligibility(birth, today, req.adult_ward)
        sizes = self.settings.rsa_key_sizes
        csrs = {k: check_csr(req.csr(k), field=f"{k}_csr", rsa_key_sizes=sizes) for k in kinds}
        if len(csrs) == 2 and csrs[SIGNING].spki_der == csrs[AUTH].spki_der:
            raise errors.InvalidRequest("the signing and auth certificates need different key pairs",
                                        field="auth_csr", code="duplicate_key")
        return birth, card_expiry, csrs

    async def issue(self, client, operator_id: str, req: IssueRequest) -> IssueResult:
        """Issue the requested certificates; raises a ShomeiError subclass on any rejection."""
        (outcome,) = await self.issue_batch(client, operator_id, [req])
        if isinstance(outcome, errors.ShomeiError):
            raise outcome
        return outcome

    async def issue_batch(self, client, operator_id: str,
                          reqs: list[IssueRequest]) -> list[IssueResult | errors.ShomeiError]:
        """Each request issued exactly as a request of its own would be (the same checks, the same
        idempotency, its own audit records), its outcome in its place: the result, or the typed error that
        refused it. A batch costs one preflight statement, signatures queued to the token together and one
        statement recording every issuance that supersedes nothing; a renewal is recorded on its own. The
        request_ids of a batch are distinct (the caller checks)."""
        started = time.perf_counter()
        outcomes: list = [None] * len(reqs)
        try:
            await self._issue_batch(client, operator_id, reqs, outcomes)
        except errors.ShomeiError as exc:  # the database or the token down: what was not settled is refused
            outcomes = [exc if o is None else o for o in outcomes]
        elapsed = time.perf_counter() - started
        for req, outcome in zip(reqs, outcomes):
            kinds_label = "+".join(req.kinds) or "none"
            if isinstance(outcome, errors.ShomeiError):
                ISSUED.labels(kinds_label, outcome.code if isinstance(outcome, errors.Unavailable)
                              else "rejected").inc()
            else:
                ISSUED.labels(kinds_label, "issued" if outcome.created else "replayed").inc()
                ISSUE_LATENCY.labels(kinds_label).observe(elapsed)
        return outcomes

    async def _issue_batch(self, client, operator_id: str, reqs: list[IssueRequest], outcomes: list) -> None:
        now = self.clock.now()
        checked = []
        for index, req in enumerate(reqs):
            try:
                birth, card_expiry, csrs = self._validate(client, req, now)
            except errors.ShomeiError as exc:
                outcomes[index] = exc
                continue
            checked.append(_Pending(index, req, birth, card_expiry, csrs,
                                    resident_hash(self.resident_key, req.resident_code)))
        if not checked:
            return
        fresh = []
        with unavailable_when_down("the database is unavailable; nothing was issued"):
            async with self.pool.acquire() as conn:
                pres = await issuance_store.preflight(conn, client_id=client.id, asked=[
                    issuance_store.Asked(p.req.request_id, p.req.municipality_code, list(p.csrs), p.rhash)
                    for p in checked])
                for p, pre in zip(checked, pres):
                    p.pre = pre
                    if pre.existing_id is not None:
                        outcomes[p.index] = await _outcome(self._replay(conn, p.req, (pre.existing_id,
                                                                                      pre.existing_hash)))
                    else:
                        fresh.append(p)
        ready = []
        for p in fresh:
            try:
                self._check_may_issue(p.req, p.pre, now)
                p.issuers = self._issuers_for(list(p.csrs), now)
            except errors.ShomeiError as exc:
                outcomes[p.index] = exc
                continue
            ready.append(p)
        # Every signature of the batch is queued to the token at once (the token thread takes them in turn).
        signed = await asyncio.gather(*(_outcome(self._sign(p, now)) for p in ready))
        alone, together = [], []
        for p, result in zip(ready, signed):
            if isinstance(result, errors.ShomeiError):
                outcomes[p.index] = result
            else:
                p.signed = result
                (alone if p.pre.has_live else together).append(p)
        recorded: dict[str, int] = {}
        if together:
            try:
                with unavailable_when_down("the database is unavailable; nothing was issued"):
                    async with self.pool.acquire() as conn:
                        recorded = await issuance_store.record(
                            conn, [self._new_issuance(p) for p in together], client_id=client.id,
                            operator_id=operator_id, not_before=now)
            except asyncpg.UniqueViolationError:
                recorded = {}  # one of them met another issuance for its resident: each on its own, below
        for p in together:
            if p.req.request_id in recorded:
                outcomes[p.index] = p.created()
            else:  # raced (the same request_id elsewhere, the same resident): settled on its own
                alone.append(p)
        # Renewals (and any request the batch statement could not record) each in a transaction of its own,
        # a few at a time, as concurrent requests would be.
        limit = asyncio.Semaphore(_RECORDS_AT_ONCE)

        async def record_alone(p: _Pending) -> None:
            async with limit:
                outcomes[p.index] = await _outcome(self._record(client, operator_id, p, now))

        await asyncio.gather(*(record_alone(p) for p in alone))

    def _new_issuance(self, p: "_Pending") -> issuance_store.NewIssuance:
        return issuance_store.NewIssuance(
            request_id=p.req.request_id, body_hash=p.req.body_hash(), resident_hash=p.rhash,
            municipality_code=p.req.municipality_code, certificates=p.signed,
            consume_free_reissue=p.pre.free_reissue and SIGNING in p.csrs)

    async def _replay(self, conn, req: IssueRequest, found: tuple[int, bytes] | None) -> IssueResult | None:
        """The answer to a request whose request_id was seen before (same body), else None."""
        if found is None:
            return None
        issuance_id, body_hash = found
        if body_hash != req.body_hash():
            raise errors.Conflict("request_id was already used with a different body", field="request_id",
                                  code="idempotency_conflict")
        certs = await cert_store.of_issuance(conn, issuance_id)
        return IssueResult(False, [IssuedCertificate.of(c) for c in certs])

    def _issuers_for(self, kinds: list[str], now: dt.datetime) -> dict:
        """The current CA generation of each kind, refused when it has none or it has expired."""
        found = {}
        for kind in kinds:
            issuer = self.issuers.issuers.current(kind)
            if issuer is None:
                raise errors.Unavailable(f"the {kind} CA has no key yet; run the key ceremony",
                                         code="ca_not_ready")
            if issuer.not_after <= now:
                raise errors.Unavailable(
                    f"the {kind} CA generation {issuer.generation} expired on {issuer.not_after:%Y-%m-%d}; "
                    "nothing was issued (an operator must roll the CA over)", code="ca_expired", retry_after=3600)
            found[kind] = issuer
        return found

    def _check_may_issue(self, req: IssueRequest, pre: issuance_store.Preflight, now: dt.datetime) -> None:
        """The municipality is known, and the renewal window is open (docs/domain.md, renewal)."""
        if pre.municipality_name is None:
            raise errors.PolicyViolation(f"municipality {req.municipality_code} is not registered",
                                         field="municipality_code", code="unknown_municipality")
        window = dt.timedelta(days=self.settings.renewal_window_days)
        early = pre.latest_valid_not_after and pre.latest_valid_not_after - now > window
        if early and not req.card_replaced and not (pre.free_reissue and req.kinds == [SIGNING]):
            # Renewal may start 3 months before expiry. The exceptions: a new card, and a signing
            # certificate reissued free after a municipal merger or an address-notation change.
            raise errors.Conflict(
                f"the resident holds a valid certificate of this kind until "
                f"{pre.latest_valid_not_after.astimezone(JST):%Y-%m-%d}; renewal opens "
                f"{self.settings.renewal_window_days} days before expiry (set card_replaced for a new card)",
                field="card_replaced", code="renewal_too_early")

    async def _sign(self, p: "_Pending", now: dt.datetime) -> list[issuance_store.NewCertificate]:
        """Build and sign each certificate (one token signature each; nothing is stored yet)."""
        req = p.req
        signed = []
        for (kind, csr), cert_id in zip(p.csrs.items(), p.pre.certificate_ids):
            issuer = p.issuers[kind]
            not_before, not_after = validity(now, p.birth, p.card_expiry, issuer.not_after)
            serial = new_serial()
            partition = cert_id // self.settings.partition_size
            subject = end_entity_subject(kind, prefecture_romaji(req.municipality_code), p.pre.municipality_name,
                                         serial_hex(serial).upper())
            tbs = self._template(issuer).tbs(
                serial=serial, spki_der=csr.spki_der, key_id=csr.key_id, subject_der=subject,
                basic4=req.resident if kind == SIGNING else None, not_before=not_before, not_after=not_after,
                partition=partition_name(issuer.generation, partition))
            signature = await self.signer.sign(issuer.key_label, issuer.algorithm, tbs)
            signed.append(issuance_store.NewCertificate(
                id=cert_id, ca_generation_id=issuer.db_id, serial=serial_bytes(serial), kind=kind,
                partition=partition, der=assemble_certificate(tbs, issuer.algorithm, signature),
                issuer_label=f"{issuer.ca_id}-g{issuer.generation}", not_after=not_after))
        return signed

    async def _record(self, client, operator_id: str, p: "_Pending", now: dt.datetime) -> IssueResult:
        """Write one issuance's certificates (and supersede the resident's old ones) in one transaction."""
        req, issuance = p.req, self._new_issuance(p)
        record = dict(client_id=client.id, operator_id=operator_id, not_before=now)
        try:
            with unavailable_when_down("the database is unavailable; nothing was issued"):
                async with self.pool.acquire() as conn:
                    if not p.pre.has_live:
                        # First certificates of these kinds: one statement, atomic on its own. Should another
                        # issuance for the resident commit meanwhile, certificate_one_live refuses this one.
                        if not await issuance_store.record(conn, [issuance], **record):
                            raise _Raced()
                    else:
                        async with conn.transaction():
                            await rev_store.enter_status_change(conn)
                            await self._supersede(conn, client, operator_id, req, p.rhash, list(p.csrs),
                                                  max(now, self.clock.now()))
                            if not await issuance_store.record(conn, [issuance], **record):
                                raise _Raced()  # rolls the superseding revocations back
            if p.pre.has_live:
                await self.status_sync()  # the superseded certificates answer revoked everywhere
        except _Raced:
            with unavailable_when_down("the database is unavailable; nothing was issued"):
                async with self.pool.acquire() as conn:
                    found = await issuance_store.find(conn, client_id=client.id, request_id=req.request_id)
                    replay = await self._replay(conn, req, found)
            if replay is None:
                raise errors.Conflict("a request with this request_id is being processed; retry",
                                      field="request_id", code="request_in_progress") from None
            return replay
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "certificate_one_live":
                raise errors.Conflict("another issuance for this resident is in progress; retry",
                                      code="concurrent_issuance") from None
            raise
        return p.created()

    async def _supersede(self, conn, client, operator_id: str, req: IssueRequest, rhash: bytes, kinds: list[str],
                         now: dt.datetime) -> None:
        """Renewal: the resident's previous certificates of these kinds are revoked (superseded)."""
        olds = await cert_store.live_of_resident(conn, rhash, kinds, for_update=True)
        await check_scope(conn, client, "supersede", olds)  # a new card here replaces only what is ours
        for old in olds:
            await rev_store.apply_revocation(conn, old, reason=Reason.superseded, at=now, effective_at=now,
                                             source="supersede", source_ref=req.request_id,
                                             entry_der=encode_entry(old.serial, now, Reason.superseded))
            await audit.record(conn, action="revoke", client_id=client.id, operator_id=operator_id,
                               serial=serial_bytes(old.serial), request_id=req.request_id,
                               details={"reason": "superseded"})


class _Raced(Exception):
    """Another request with the same request_id committed first."""


@dataclass(eq=False)
class _Pending:
    """One request of a batch on its way: checked, then read (preflight), then signed."""

    index: int  # its place in the batch
    req: IssueRequest
    birth: dt.date
    card_expiry: dt.date
    csrs: dict
    rhash: bytes
    pre: issuance_store.Preflight | None = None
    issuers: dict | None = None
    signed: list | None = None

    def created(self) -> IssueResult:
        return IssueResult(True, [IssuedCertificate(c.kind, int.from_bytes(c.serial, "big"), c.der, c.not_after)
                                  for c in self.signed])


async def _outcome(awaitable):
    """What ``awaitable`` returns, or the typed error it raised (one request's refusal in a batch)."""
    try:
        return await awaitable
    except errors.ShomeiError as exc:
        return exc
