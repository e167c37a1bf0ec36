"""The audit trail's hash chain, computed on the host: the content format of a record, its hash, the
checkpoint message the audit key signs, and a streaming verifier that names the first problem.

The database chains each record as it is inserted (schemas/migrations/0009_audit_chain.sql); this
module computes the same thing independently of the database's functions, so that `shomei audit
verify` does not trust them. Both sides must keep to the format below (version 1):

    hash    = sha256(prev_hash || utf8(content)); prev_hash of seq 1 is GENESIS (32 zero bytes)
    content = field(seq) US field(at) US field(action) US field(client_id) US field(operator_id)
              US field(serial) US field(request_id) US field(details)        (US = "\\x1f")
    field(None) = "-"; field(v) = "<len(v) in characters>:" + v
    at      = UTC with microseconds, "YYYY-MM-DDTHH:MM:SS.ffffffZ"; serial = lower-case hex of its bytes;
    details = PostgreSQL's text of the jsonb value (details::text); numbers in decimal.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

GENESIS = bytes(32)
SEPARATOR = "\x1f"
CHECKPOINT_DOMAIN = b"shomei audit checkpoint\x00"
_UTC = dt.UTC


class ChainRecord(NamedTuple):
    """One audit record as the verifier reads it (storage.audit.read_chain yields rows in this order)."""

    id: int
    seq: int
    at: dt.datetime
    action: str
    client_id: int | None
    operator_id: str | None
    serial: bytes | None
    request_id: str | None
    details: str  # details::text
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: bytes
    signed_at: dt.datetime
    key_label: str
    signature: bytes


def _field(value: str | None) -> str:
    return "-" if value is None else f"{len(value)}:{value}"


def format_at(at: dt.datetime) -> str:
    """``at`` in UTC with microseconds, as the database's to_char(... 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')."""
    if at.tzinfo is not _UTC:
        at = at.astimezone(_UTC)
    return at.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def content(seq: int, at: dt.datetime, action: str, client_id: int | None, operator_id: str | None,
            serial: bytes | None, request_id: str | None, details: str | None) -> str:
    """The canonical content of a record (format in the module's docstring)."""
    return SEPARATOR.join((
        _field(str(seq)), _field(format_at(at)), _field(action),
        _field(None if client_id is None else str(client_id)), _field(operator_id),
        _field(None if serial is None else serial.hex()), _field(request_id), _field(details)))


def record_hash(prev_hash: bytes, text: str) -> bytes:
    return hashlib.sha256(prev_hash + text.encode("utf-8")).digest()


def checkpoint_message(seq: int, chain_hash: bytes) -> bytes:
    """What the audit key signs for a checkpoint of the head (seq, hash): domain-separated, fixed size."""
    if len(chain_hash) != 32:
        raise ValueError("a chain hash is 32 bytes")
    return CHECKPOINT_DOMAIN + seq.to_bytes(8, "big") + chain_hash


def signature_valid(spki_der: bytes, message: bytes, signature: bytes) -> bool:
    """Check a signature of the audit key (as the token makes them: RSA PKCS#1 v1.5 or ECDSA, SHA-256)."""
    key = serialization.load_der_public_key(spki_der)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


# -- verification --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """The first thing found wrong: ``kind`` is one of changed, deleted, inserted, head, checkpoint."""

    kind: str
    message: str
    seq: int | None = None
    id: int | None = None


@dataclass(frozen=True)
class Summary:
    records: int
    last_seq: int
    checkpoints: int  # checkpoints verified (hash at their seq and signature)
    last_checkpoint_seq: int | None
    last_checkpoint_hash: bytes | None = None  # to compare with a copy kept outside the database

    @property
    def after_last_checkpoint(self) -> int:
        return self.last_seq - (self.last_checkpoint_seq or 0)


class _Link(NamedTuple):
    seq: int
    id: int | None
    prev_hash: bytes
    hash: bytes


_GENESIS_LINK = _Link(0, None, GENESIS, GENESIS)


def _name(link: _Link) -> str:
    return "the genesis" if link.id is None else f"seq {link.seq} (id {link.id})"


class ChainVerifier:
    """Recompute the chain from records in (seq, id) order and check it, with the signed checkpoints
    (in seq order) and the head. Feed batches with ``feed``; ``finish`` with the head. Stops at the first
    problem (``problem``); an ambiguous break of the chain is decided with the record that follows.

    ``key_for(label)`` returns the SPKI DER of the audit key a checkpoint names (read from the token),
    or None when there is no such key."""

    def __init__(self, key_for):
        self._key_for = key_for
        self._before = _GENESIS_LINK  # the record before the previous one
        self._last = _GENESIS_LINK  # the previous record
        self._suspect: tuple[_Link, _Link, _Link] | None = None  # (before, last, record) of a broken link
        self._last_at: tuple[dt.datetime | None, str | None] = (None, None)  # the last time and its field
        self._checkpoints: list[Checkpoint] = []  # pending, in seq order
        self._cp_index = 0
        self.records = 0
        self.checkpoints_verified = 0
        self.last_checkpoint_seq: int | None = None
        self.last_checkpoint_hash: bytes | None = None
        self.problem: Problem | None = None

    # checkpoints arrive in pages, in seq order, ahead of the records they cover
    def add_checkpoints(self, checkpoints: Iterable[Checkpoint]) -> None:
        if self._cp_index:
            self._checkpoints = self._checkpoints[self._cp_index:]
            self._cp_index = 0
        self._checkpoints.extend(checkpoints)

    def _fail(self, kind: str, message: str, link: _Link | None = None) -> None:
        if self.problem is None:
            self.problem = Problem(kind, message, link.seq if link else None, link.id if link else None)

    def _check_checkpoint(self, cp: Checkpoint, chain_hash: bytes | None) -> bool:
        if chain_hash is None:
            self._fail("checkpoint", f"checkpoint at seq {cp.seq}: the chain has no record with that seq")
            return False
        if cp.hash != chain_hash:
            self._fail("checkpoint", f"checkpoint at seq {cp.seq}: its hash differs from the chain's hash at "
                                     f"that seq (records up to seq {cp.seq} were changed after it was signed)")
            return False
        spki = self._key_for(cp.key_label)
        if spki is None:
            self._fail("checkpoint", f"checkpoint at seq {cp.seq}: signed with key {cp.key_label!r}, which is not "
                                     f"an audit key of the token")
            return False
        if not signature_valid(spki, checkpoint_message(cp.seq, cp.hash), cp.signature):
            self._fail("checkpoint", f"checkpoint at seq {cp.seq}: its signature does not verify with the "
                                     f"audit key {cp.key_label!r} of the token")
            return False
        self.checkpoints_verified += 1
        self.last_checkpoint_seq, self.last_checkpoint_hash = cp.seq, cp.hash
        return True

    def _next_checkpoint_seq(self) -> int | float:
        return self._checkpoints[self._cp_index].seq if self._cp_index < len(self._checkpoints) else float("inf")

    def _checkpoints_through(self, last: _Link) -> bool:
        """Check the pending checkpoints up to the record ``last`` (the one at its seq against its hash)."""
        cps = self._checkpoints
        while self._cp_index < len(cps) and cps[self._cp_index].seq <= last.seq:
            cp = cps[self._cp_index]
            self._cp_index += 1
            if not self._check_checkpoint(cp, last.hash if cp.seq == last.seq else None):
                return False
        return True

    def _resolve_suspect(self, following: _Link | None) -> None:
        _before, last, rec = self._suspect
        if following is not None and following.prev_hash == last.hash and following.seq == rec.seq + 1:
            self._fail("inserted", f"record {_name(rec)} was inserted: it does not chain to {_name(last)}, "
                                   f"and seq {following.seq} (id {following.id}) chains to {_name(last)} "
                                   f"over it", rec)
        elif last.id is None:
            self._fail("inserted", f"record {_name(rec)} does not chain to the genesis (its prev_hash is not 32 "
                                   f"zero bytes): it was inserted or changed", rec)
        else:
            self._fail("inserted", f"record {_name(last)} was inserted or changed (its hash recomputed): its "
                                   f"successor seq {rec.seq} (id {rec.id}) does not chain to it", last)

    def feed(self, rows: Iterable[Sequence]) -> bool:
        """Check a batch of records (ChainRecord field order). False once a problem is found.

        The hot loop builds each record's content inline (the same text as ``content``, which the tests
        hold it to) and keeps links as plain tuples (seq, id, prev_hash, hash): about 3 µs a record."""
        if self.problem is not None:
            return False
        sha256, utc = hashlib.sha256, _UTC
        before, last = self._before, self._last
        last_at, at_field = self._last_at
        next_cp = self._next_checkpoint_seq()
        count = 0
        try:
            for row in rows:
                rid, seq, at, action, client_id, operator_id, serial, request_id, details, prev_hash, stored = row
                count += 1
                link = (seq, rid, prev_hash, stored)
                if self._suspect is not None:
                    self._resolve_suspect(_Link._make(link))
                    return False
                if seq != last[0] + 1:
                    self._seq_problem(_Link._make(before), _Link._make(last), _Link._make(link))
                    return False
                if last[0] >= next_cp:  # the checkpoints up to the previous record
                    if not self._checkpoints_through(_Link._make(last)):
                        return False
                    next_cp = self._next_checkpoint_seq()
                linked = prev_hash == last[3]
                if not linked and prev_hash == before[3] and before is not last:
                    # chains over the previous record (whose seq the forger took, moving this one's up)
                    self._fail("inserted", f"record {_name(_Link._make(last))} was inserted: seq {seq} (id {rid}) "
                                           f"chains to {_name(_Link._make(before))} over it", _Link._make(last))
                    return False
                if at != last_at:  # the records of one transaction share their time
                    last_at = at
                    text = (at.isoformat(timespec="microseconds")[:-6] + "Z" if at.tzinfo is utc
                            else format_at(at))
                    at_field = f"{len(text)}:{text}"
                s = str(seq)
                text = (f"{len(s)}:{s}\x1f{at_field}\x1f{len(action)}:{action}\x1f"
                        f"{'-' if client_id is None else _field(str(client_id))}\x1f"
                        f"{'-' if operator_id is None else _field(operator_id)}\x1f"
                        f"{'-' if serial is None else _field(serial.hex())}\x1f"
                        f"{'-' if request_id is None else _field(request_id)}\x1f"
                        f"{'-' if details is None else _field(details)}")
                if sha256(prev_hash + text.encode()).digest() != stored:
                    self._fail("changed", f"record seq {seq} (id {rid}) was changed: its stored hash differs "
                                          f"from the hash of its content", _Link._make(link))
                    return False
                if not linked:
                    self._suspect = (_Link._make(before), _Link._make(last), _Link._make(link))
                before, last = last, link
        finally:
            self.records += count
            self._before, self._last = before, last
            self._last_at = (last_at, at_field)
        return True

    def _seq_problem(self, before: _Link, last: _Link, link: _Link) -> None:
        seq, rid = link.seq, link.id
        if seq < 1:
            self._fail("inserted", f"record id {rid} has seq {seq}: not a seq of the chain", link)
        elif seq == last.seq:
            # Two records with one seq: the one that chains to the record before them is the original.
            first_ok, second_ok = last.prev_hash == before.hash, link.prev_hash == before.hash
            culprit, other = (last, link) if second_ok and not first_ok else (link, last)
            self._fail("inserted", f"record {_name(culprit)} was inserted: seq {seq} is held by two "
                                   f"records (ids {other.id} and {culprit.id})", culprit)
        else:  # records come in seq order: a gap
            missing = f"seq {last.seq + 1}" if seq == last.seq + 2 else f"seqs {last.seq + 1}..{seq - 1}"
            self._fail("deleted", f"records deleted: {missing} missing between {_name(last)} and "
                                  f"seq {seq} (id {rid})", link)

    def finish(self, head_seq: int, head_hash: bytes) -> Problem | Summary:
        """After the last record: the pending checks, the head, checkpoints beyond the last record."""
        last = _Link._make(self._last)
        if self.problem is None and self._suspect is not None:
            self._resolve_suspect(None)
        if self.problem is None:
            self._checkpoints_through(last)
        if self.problem is None:
            if head_seq > last.seq:
                missing = f"seq {head_seq}" if head_seq == last.seq + 1 else f"seqs {last.seq + 1}..{head_seq}"
                self._fail("deleted", f"records deleted at the end: {missing} (the head is at seq {head_seq}, the "
                                      f"last record is {_name(last)})")
            elif head_seq < last.seq:
                self._fail("inserted", f"records after the head (seq {head_seq}): seqs {head_seq + 1}..{last.seq} "
                                       f"were not chained by the database", last)
            elif head_hash != last.hash:
                self._fail("head", f"the head's hash differs from the hash of {_name(last)}: the head or the "
                                   f"record was changed", last)
        if self.problem is None and self._cp_index < len(self._checkpoints):
            cp = self._checkpoints[self._cp_index]
            self._fail("checkpoint", f"checkpoint at seq {cp.seq} is beyond the last record (seq {last.seq}): "
                                     f"records after seq {last.seq} were deleted")
        if self.problem is not None:
            return self.problem
        return Summary(self.records, last.seq, self.checkpoints_verified, self.last_checkpoint_seq,
                       self.last_checkpoint_hash)
