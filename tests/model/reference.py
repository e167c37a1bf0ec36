"""A reference model of the revocation rules (docs/domain.md), written apart from the product's code:
residents, their certificates, and what every event does to each certificate's status, to the
online window's answers and to the CRLs. Pure: time is an argument, nothing is stored or sent.

The stateful test (test_status_model.py) drives the real service with random sequences of events and
checks after every step that the service agrees with this model.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# CRLReason values (RFC 5280 5.3.1)
UNSPECIFIED, KEY_COMPROMISE, AFFILIATION_CHANGED, SUPERSEDED, CESSATION, HOLD = 0, 1, 3, 4, 5, 6

WINDOW_REASONS = {"holder_request": CESSATION, "card_returned": CESSATION, "death": CESSATION,
                  "key_compromise": KEY_COMPROMISE, "recording_error": UNSPECIFIED}
# feed kind -> (kinds it revokes, reason, free reissue)
FEED = {
    "moved": (("signing",), AFFILIATION_CHANGED, False),
    "name_changed": (("signing",), AFFILIATION_CHANGED, False),
    "birth_date_corrected": (("signing",), AFFILIATION_CHANGED, False),
    "sex_corrected": (("signing",), AFFILIATION_CHANGED, False),
    "address_notation_changed": (("signing",), AFFILIATION_CHANGED, True),
    "municipal_merger": ((), None, True),
    "died": (("signing", "auth"), CESSATION, False),
    "emigrated": (("signing", "auth"), CESSATION, False),
    "record_deleted": (("signing", "auth"), CESSATION, False),
}
RENEWAL_WINDOW = dt.timedelta(days=92)


@dataclass
class Cert:
    serial: int
    kind: str
    resident: str
    not_before: dt.datetime
    not_after: dt.datetime
    status: str = "valid"  # valid | held | revoked
    reason: int | None = None
    since: dt.datetime | None = None  # revocationDate of the hold or revocation in force
    invalidity: dt.datetime | None = None
    pending: dt.datetime | None = None  # an online revocation accepted, not yet effective

    @property
    def live(self) -> bool:
        return self.status != "revoked"

    def in_force(self) -> tuple | None:
        """What a CRL lists for it: (reason or None for unspecified, revocationDate, invalidityDate)."""
        if self.status == "valid":
            return None
        return (None if self.reason == UNSPECIFIED else self.reason, self.since, self.invalidity)


@dataclass
class Model:
    certs: dict[int, Cert] = field(default_factory=dict)
    free_reissue: set[str] = field(default_factory=set)  # residents entitled to a free reissue
    events: dict[str, tuple] = field(default_factory=dict)  # feed event id -> (resident, kind, occurred_at)
    event_outcomes: dict[str, str] = field(default_factory=dict)
    base_crl: dict[str, tuple[dt.datetime, dict[int, tuple]]] = field(default_factory=dict)  # ca -> (this, entries)

    # -- looking ----------------------------------------------------------------------------------
    def of(self, resident: str, kinds=("signing", "auth"), live_only=True) -> list[Cert]:
        return [c for c in self.certs.values()
                if c.resident == resident and c.kind in kinds and (c.live or not live_only)]

    # -- changes ------------------------------------------------------------------------------------
    def _revoke(self, cert: Cert, reason: int, now: dt.datetime, invalidity=None) -> None:
        cert.status, cert.reason, cert.since, cert.invalidity, cert.pending = "revoked", reason, now, invalidity, None

    def _hold(self, cert: Cert, now: dt.datetime) -> None:
        cert.status, cert.reason, cert.since, cert.invalidity = "held", HOLD, now, None

    def _cascade(self, revoked: list[Cert], reason: int, now: dt.datetime) -> None:
        """The authentication certificate revoked => the resident's signing certificate too (a
        compromised auth key says nothing of the signing key: cessationOfOperation then)."""
        for cert in revoked:
            if cert.kind == "auth":
                for s in self.of(cert.resident, ("signing",)):
                    self._revoke(s, CESSATION if reason == KEY_COMPROMISE else reason, now)

    # -- issuance -----------------------------------------------------------------------------------
    def may_issue(self, resident: str, kinds: tuple[str, ...], card_replaced: bool, now: dt.datetime) -> bool:
        valid = [c.not_after for c in self.of(resident, kinds) if c.status == "valid"]
        if not valid or max(valid) - now <= RENEWAL_WINDOW or card_replaced:
            return True
        return resident in self.free_reissue and kinds == ("signing",)

    def issued(self, resident: str, new: list[Cert], now: dt.datetime) -> None:
        kinds = tuple(c.kind for c in new)
        for old in self.of(resident, kinds):
            self._revoke(old, SUPERSEDED, now)
        if "signing" in kinds:
            self.free_reissue.discard(resident)
        for cert in new:
            self.certs[cert.serial] = cert

    # -- the window -----------------------------------------------------------------------------------
    def window_revoke(self, target, reason_name: str, now: dt.datetime) -> tuple[int, str | None]:
        """target: a Cert, or (resident, kinds). Returns (HTTP status, error code)."""
        if isinstance(target, Cert):
            if target.status == "revoked":
                return 409, "already_revoked"
            primary = [target]
        else:
            primary = self.of(*target)
            if not primary:
                return 404, "no_certificate"
        reason = WINDOW_REASONS[reason_name]
        for cert in primary:
            self._revoke(cert, reason, now, now if reason == KEY_COMPROMISE else None)
        self._cascade(primary, reason, now)
        if reason_name == "recording_error":
            self.free_reissue.update(c.resident for c in primary)
        return 201, None

    def window_hold(self, target, now: dt.datetime) -> tuple[int, str | None]:
        if isinstance(target, Cert):
            if target.status == "revoked":
                return 409, "already_revoked"
            targets = [target]
        else:
            targets = self.of(*target)
            if not targets:
                return 404, "no_certificate"
        todo = [c for c in targets if c.status == "valid"]
        if not todo:
            return 409, "already_held"
        for cert in todo:
            self._hold(cert, now)
        return 201, None

    def window_release(self, target) -> tuple[int, str | None]:
        if isinstance(target, Cert):
            if target.kind == "signing":
                return 422, "signing_hold_not_releasable"  # a signing hold ends only in revocation
            targets = [target]
        else:
            targets = self.of(*target)
            if not targets:
                return 404, "no_certificate"
            if any(c.kind == "signing" for c in targets):
                return 422, "signing_hold_not_releasable"
        todo = [c for c in targets if c.status == "held"]
        if not todo:
            if isinstance(target, Cert) and target.status == "revoked":
                return 409, "already_revoked"
            return 409, "not_held"
        for cert in todo:
            cert.status, cert.reason, cert.since = "valid", None, None
        return 201, None

    # -- the online window ---------------------------------------------------------------------------
    def online_revoke(self, cert: Cert, now: dt.datetime) -> tuple[int, str | None]:
        if cert.not_after < now:
            return 422, "certificate_expired"
        if cert.status == "revoked":
            return 409, "already_revoked"
        if cert.pending is not None:
            return 409, "already_requested"
        cert.pending = now
        if cert.kind == "auth":
            for s in self.of(cert.resident, ("signing",)):
                if s.pending is None:
                    s.pending = now
        return 202, None

    def validity_check(self, cert: Cert, now: dt.datetime) -> str:
        if cert.not_after < now:
            return "certificate_expired"
        if cert.status == "revoked":
            return "revoked"
        if cert.pending is not None:
            return "revocation_accepted"
        return "revoked" if cert.status == "held" else "valid"

    def crl_issued(self, now: dt.datetime) -> None:
        """Any CRL issuance makes every accepted online revocation effective, dated then (a hold ends)."""
        for cert in self.certs.values():
            if cert.pending is not None and cert.live:
                self._revoke(cert, CESSATION, now)

    # -- the resident-register feed -------------------------------------------------------------------
    def feed(self, event_id: str, resident: str, kind: str, occurred_at: dt.datetime, now: dt.datetime) -> str:
        if event_id in self.events:
            return "duplicate" if self.events[event_id] == (resident, kind, occurred_at) else "rejected"
        self.events[event_id] = (resident, kind, occurred_at)
        revokes, reason, free = FEED[kind]
        concerned = [c for c in self.of(resident, revokes or ("signing",))]
        older = [c for c in concerned if c.not_before < occurred_at]  # events apply to older certificates
        if concerned and not older:
            outcome = "issued_after_event"
        elif revokes and older:
            for cert in older:
                self._revoke(cert, reason, now)
            self._cascade(older, reason, now)
            if free:
                self.free_reissue.add(resident)
            outcome = "applied"
        elif not revokes and older:
            self.free_reissue.add(resident)
            outcome = "applied"
        else:
            outcome = "no_certificate"
        self.event_outcomes[event_id] = outcome
        return outcome

    # -- CRLs -----------------------------------------------------------------------------------------
    def crl_entries(self, ca: str, now: dt.datetime) -> dict[int, tuple]:
        """A complete CRL of ``ca`` issued at ``now``: every hold and revocation in force of a certificate
        that has not expired."""
        return {c.serial: c.in_force() for c in self.certs.values()
                if c.kind == ca and c.status != "valid" and c.not_after >= now}
