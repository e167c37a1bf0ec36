"""The revocation rules (docs/domain.md, revocation rules), as data and pure functions.

Which certificates an event revokes, with which CRLReason (RFC 5280 5.3.1), whether it entitles the
resident to a free reissue, and the cascade "authentication certificate revoked => signing certificate
revoked too". No I/O: storage and services apply what these functions decide.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .errors import Forbidden, PolicyViolation
from .kinds import AUTH, KINDS, SIGNING
from .revocation import Reason



@dataclass(frozen=True)
class Rule:
    """What one event does: the certificate kinds it revokes, the reason, and a free reissue mark."""

    revokes: tuple[str, ...]
    reason: Reason
    free_reissue: bool = False
    with_invalidity_date: bool = False


# Municipal window reasons (POST /v1/revocations).
WINDOW_RULES: dict[str, Rule] = {
    "holder_request": Rule(KINDS, Reason.cessation_of_operation),
    "card_returned": Rule(KINDS, Reason.cessation_of_operation),
    "death": Rule(KINDS, Reason.cessation_of_operation),
    "key_compromise": Rule(KINDS, Reason.key_compromise, with_invalidity_date=True),
    # 職権失効: the entry carries no reasonCode (unspecified), and the reissue is free.
    "recording_error": Rule(KINDS, Reason.unspecified, free_reissue=True),
}

# Resident-register feed event kinds (住基連携 異動等失効情報).
FEED_RULES: dict[str, Rule] = {
    # A change of the basic-4 information: only the signing certificate carries it.
    "moved": Rule((SIGNING,), Reason.affiliation_changed),
    "name_changed": Rule((SIGNING,), Reason.affiliation_changed),
    "birth_date_corrected": Rule((SIGNING,), Reason.affiliation_changed),
    "sex_corrected": Rule((SIGNING,), Reason.affiliation_changed),
    "address_notation_changed": Rule((SIGNING,), Reason.affiliation_changed, free_reissue=True),
    # 市町村合併: nothing is revoked; the holder may get a new certificate free of charge.
    "municipal_merger": Rule((), Reason.unspecified, free_reissue=True),
    "died": Rule(KINDS, Reason.cessation_of_operation),
    "emigrated": Rule(KINDS, Reason.cessation_of_operation),
    "record_deleted": Rule(KINDS, Reason.cessation_of_operation),
}

# An online revocation application (the holder asks).
ONLINE_RULE = Rule(KINDS, Reason.cessation_of_operation)


def window_rule(reason: str) -> Rule:
    """The rule of a window reason; raises PolicyViolation for an unknown one."""
    try:
        return WINDOW_RULES[reason]
    except KeyError:
        raise PolicyViolation(f"reason must be one of {', '.join(WINDOW_RULES)}", field="reason",
                              code="invalid_reason") from None


def cascade_reason(reason: Reason) -> Reason:
    """Reason of the signing certificate revoked because its authentication certificate was: the same,
    except that a compromised auth key says nothing about the signing key (no keyCompromise claim)."""
    return Reason.cessation_of_operation if reason == Reason.key_compromise else reason


def cascades(kind: str) -> bool:
    """Revoking a certificate of ``kind`` revokes the resident's signing certificate too (auth only)."""
    return kind == AUTH


def check_hold_release(kind: str) -> None:
    """A signing-certificate hold can never be released: it ends only in revocation (docs/domain.md,
    revocation rules: holds)."""
    if kind == SIGNING:
        raise PolicyViolation(
            "a hold on a signing certificate cannot be released; it ends only in revocation "
            "(POST /v1/revocations), after which a new certificate may be issued",
            field="serial", code="signing_hold_not_releasable",
            message_ja="署名用電子証明書の一時保留は解除できません。失効の届出により終了し、再発行を受けてください。")


# No certificate is valid before 1950 (where RFC 5280's UTCTime starts): an earlier invalidity date is a
# typing error, and one before the year 1000 would not even encode as a GeneralizedTime in a CRL entry.
EARLIEST_INVALIDITY = dt.datetime(1950, 1, 1, tzinfo=dt.timezone.utc)


def check_invalidity_date(value: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    """invalidityDate (RFC 5280 5.3.2): not in the future; whole seconds, UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise PolicyViolation("invalidity_date needs a time zone (RFC 3339)", field="invalidity_date",
                              code="invalid_invalidity_date")
    try:
        value = value.astimezone(dt.timezone.utc).replace(microsecond=0)
    except OverflowError:  # year 1 or 9999 with an offset: no time in UTC
        value = None
    if value is None or value < EARLIEST_INVALIDITY:
        raise PolicyViolation("invalidity_date must be between 1950 and now", field="invalidity_date",
                              code="invalid_invalidity_date")
    if value > now:
        raise PolicyViolation("invalidity_date may not be in the future", field="invalidity_date",
                              code="invalid_invalidity_date")
    return value


def check_scope(*, client_kind: str, client_municipality: str | None, action: str, issued_in: str,
                lives_in: str | None) -> None:
    """A terminal acts on a certificate issued in its municipality, or of a resident who has since moved
    in; the call centre (kind national) may place holds anywhere and do nothing else. Raises Forbidden
    (out_of_scope, not_allowed)."""
    if client_kind == "national":
        if action != "hold":
            raise Forbidden("the call centre may place holds and do nothing else", code="not_allowed")
        return
    if client_municipality is not None and client_municipality in (issued_in, lives_in):
        return
    raise Forbidden(f"this terminal acts for municipality {client_municipality}; the certificate was issued in "
                    f"{issued_in} and its holder does not live in {client_municipality}", code="out_of_scope",
                    field="serial")
