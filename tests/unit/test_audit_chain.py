"""The audit chain's host side (ca_core.audit): the content format, and the verifier naming the first
problem of a chain built here (the database's trigger is checked against the same functions in
tests/integration/test_audit_trail.py)."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ca_core import audit as chain

T0 = dt.datetime(2026, 11, 22, 3, 0, 0, 123456, tzinfo=dt.UTC)
LABEL = "shomei-audit"


def build(n: int, start_id: int = 1) -> list[chain.ChainRecord]:
    rows, prev = [], chain.GENESIS
    for i in range(1, n + 1):
        fields = (i, T0 + dt.timedelta(seconds=i), "revoke" if i % 2 else "issue", i % 3 or None,
                  None if i % 4 else f"op-{i}", (i * 7919).to_bytes(16, "big"), f"req-{i}",
                  '{"kind": "signing", "reason": 3}')
        h = chain.record_hash(prev, chain.content(*fields))
        rows.append(chain.ChainRecord(start_id + i - 1, *fields, prev, h))
        prev = h
    return rows


def rehash(rows: list[chain.ChainRecord], index: int, **changes) -> None:
    """Change a record and recompute its hash (a careful forger), leaving its successors alone."""
    r = rows[index]._replace(**changes)
    rows[index] = r._replace(hash=chain.record_hash(r.prev_hash, chain.content(*r[1:9])))


def run(rows, head=None, checkpoints=(), keys=None, batch=7):
    v = chain.ChainVerifier((keys or {}).get)
    v.add_checkpoints(checkpoints)
    for i in range(0, len(rows), batch):
        if not v.feed(rows[i:i + batch]):
            break
    if head is None:
        head = (rows[-1].seq, rows[-1].hash) if rows else (0, chain.GENESIS)
    return v.finish(*head)


@pytest.fixture(scope="module")
def audit_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, {LABEL: spki}


def sign(key, seq: int, h: bytes) -> chain.Checkpoint:
    sig = key.sign(chain.checkpoint_message(seq, h), padding.PKCS1v15(), hashes.SHA256())
    return chain.Checkpoint(seq, h, T0, LABEL, sig)


def test_content_format():
    text = chain.content(12, dt.datetime(2026, 1, 2, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=9))),
                         "issue", 7, None, b"\x00\xab", "", '{"a": "日本"}')
    assert text == "2:12\x1f27:2026-01-02T03:00:00.000000Z\x1f5:issue\x1f1:7\x1f-\x1f4:00ab\x1f0:\x1f11:{\"a\": \"日本\"}"
    # NULL and '' differ; a separator inside a value cannot shift the fields
    assert chain.content(1, T0, "a", None, None, None, None, "{}") != chain.content(1, T0, "a", None, "", None, None, "{}")
    assert (chain.content(1, T0, "a", None, "x\x1f1:y", None, None, "{}")
            != chain.content(1, T0, "a", None, "x", b"y", None, "{}"))
    assert chain.checkpoint_message(1, bytes(32)) == b"shomei audit checkpoint\x00" + (1).to_bytes(8, "big") + bytes(32)


def test_intact_chain_with_checkpoints(audit_key):
    key, keys = audit_key
    rows = build(40)
    cps = [sign(key, r.seq, r.hash) for r in (rows[9], rows[29])]
    result = run(rows, checkpoints=cps, keys=keys)
    assert result == chain.Summary(records=40, last_seq=40, checkpoints=2, last_checkpoint_seq=30,
                                   last_checkpoint_hash=rows[29].hash)
    assert result.after_last_checkpoint == 10
    assert run([]) == chain.Summary(0, 0, 0, None)


def test_ecdsa_checkpoints_verify_too():
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    rows = build(3)
    sig = key.sign(chain.checkpoint_message(3, rows[2].hash), ec.ECDSA(hashes.SHA256()))
    assert run(rows, checkpoints=[chain.Checkpoint(3, rows[2].hash, T0, LABEL, sig)], keys={LABEL: spki}).checkpoints == 1


def test_changed_record_is_named():
    rows = build(30)
    rows[16] = rows[16]._replace(details='{"kind": "auth", "reason": 3}')
    p = run(rows)
    assert (p.kind, p.seq, p.id) == ("changed", 17, 17)
    assert "seq 17 (id 17)" in p.message


def test_changed_and_rehashed_record_is_named_by_its_successor():
    rows = build(30)
    rehash(rows, 16, action="hold")
    p = run(rows)
    assert (p.kind, p.seq, p.id) == ("inserted", 17, 17)
    assert "changed" in p.message


@pytest.mark.parametrize("gone", [[0], [5], [5, 6, 7], [29]])
def test_deleted_records_are_named(gone):
    rows = [r for i, r in enumerate(build(30)) if i not in gone]
    p = run(rows, head=(30, build(30)[-1].hash))
    assert p.kind == "deleted"
    first, last = gone[0] + 1, gone[-1] + 1
    assert (f"seq {first}" if first == last else f"seqs {first}..{last}") in p.message


def test_record_inserted_in_the_middle_is_named():
    rows = build(30)
    # the forger shifts seq 11.. by one, and inserts a record at seq 11 chained correctly to seq 10
    fields = (11, T0, "revoke", None, None, b"\x01", "forged", "{}")
    forged = chain.ChainRecord(999, *fields, rows[9].hash, chain.record_hash(rows[9].hash, chain.content(*fields)))
    shifted = [r._replace(seq=r.seq + 1) for r in rows[10:]]
    for i, r in enumerate(shifted):  # each shifted record rehashed for its new seq, keeping its prev_hash
        shifted[i] = r._replace(hash=chain.record_hash(r.prev_hash, chain.content(*r[1:9])))
    p = run(rows[:10] + [forged] + shifted, head=(31, shifted[-1].hash))
    assert (p.kind, p.seq, p.id) == ("inserted", 11, 999)
    # the same without rehashing the shifted records (their seq is in their content)
    p = run(rows[:10] + [forged] + [r._replace(seq=r.seq + 1) for r in rows[10:]], head=(31, rows[-1].hash))
    assert (p.kind, p.seq, p.id) == ("inserted", 11, 999)


def test_record_inserted_with_a_wrong_prev_hash_is_named():
    rows = build(30)
    fields = (11, T0, "revoke", None, None, b"\x01", "forged", "{}")
    bogus = bytes(range(32))
    forged = chain.ChainRecord(999, *fields, bogus, chain.record_hash(bogus, chain.content(*fields)))
    shifted = [r._replace(seq=r.seq + 1) for r in rows[10:]]
    for i, r in enumerate(shifted):
        shifted[i] = r._replace(hash=chain.record_hash(r.prev_hash, chain.content(*r[1:9])))
    p = run(rows[:10] + [forged] + shifted, head=(31, shifted[-1].hash))
    assert (p.kind, p.seq, p.id) == ("inserted", 11, 999)


def test_duplicate_seq_is_named():
    rows = build(20)
    fields = (8, T0, "revoke", None, None, None, "dup", "{}")
    dup = chain.ChainRecord(500, *fields, rows[6].hash, chain.record_hash(rows[6].hash, chain.content(*fields)))
    p = run(rows[:8] + [dup] + rows[8:])
    assert (p.kind, p.seq, p.id) == ("inserted", 8, 500)
    assert "held by two records" in p.message


def test_head_mismatch():
    rows = build(10)
    assert run(rows, head=(12, rows[-1].hash)).message.startswith("records deleted at the end: seqs 11..12")
    assert run(rows, head=(9, rows[8].hash)).kind == "inserted"
    assert run(rows, head=(10, bytes(32))).kind == "head"


def test_checkpoint_problems(audit_key):
    key, keys = audit_key
    rows = build(20)
    good = sign(key, 10, rows[9].hash)
    forged = dataclasses.replace(good, signature=bytes([good.signature[0] ^ 1]) + good.signature[1:])
    p = run(rows, checkpoints=[forged], keys=keys)
    assert (p.kind, "signature") == ("checkpoint", "signature") and "seq 10" in p.message
    wrong_hash = sign(key, 10, rows[10].hash)  # signed, but not the chain's hash at seq 10
    assert "differs from the chain" in run(rows, checkpoints=[wrong_hash], keys=keys).message
    other_key = dataclasses.replace(good, key_label="shomei-signing-g1")
    assert "not an audit key" in run(rows, checkpoints=[other_key], keys=keys).message
    beyond = sign(key, 25, bytes(32))  # the tail and the head rewound: the checkpoint still tells
    assert "beyond the last record" in run(rows, checkpoints=[good, beyond], keys=keys).message
    # a later, consistent rewrite of the whole chain is caught by the signed checkpoint
    rewritten = build(20)
    rehash(rewritten, 3, action="hold")
    for i in range(4, 20):
        r = rewritten[i]._replace(prev_hash=rewritten[i - 1].hash)
        rewritten[i] = r._replace(hash=chain.record_hash(r.prev_hash, chain.content(*r[1:9])))
    p = run(rewritten, checkpoints=[good], keys=keys)
    assert p.kind == "checkpoint" and "seq 10" in p.message


def test_the_verifier_computes_the_reference_content_for_edge_values():
    """The verifier's inline content is ``content`` exactly: a chain built with ``content`` from edge
    values (NULL and empty, separators, non-ASCII, other time zones) verifies."""
    values = [None, "", "-", "0:", "x\x1fy", "1:x\x1f1:y", "山田　太郎", "🎌\n"]
    zones = [dt.UTC, dt.timezone(dt.timedelta(hours=9)), dt.timezone(dt.timedelta(hours=-3, minutes=-30))]
    rows, prev = [], chain.GENESIS
    for i, v in enumerate(values * 3, 1):
        at = (T0 + dt.timedelta(microseconds=i * 7)).astimezone(zones[i % 3])
        fields = (i, at, v or "a", None if i % 2 else i * 1000, v, None if v is None else v.encode(), v,
                  '{"v": %s}' % ("null" if v is None else repr(v)))
        h = chain.record_hash(prev, chain.content(*fields))
        rows.append(chain.ChainRecord(i, *fields, prev, h))
        prev = h
    assert run(rows) == chain.Summary(len(rows), len(rows), 0, None)
    assert run([r._replace(seq=0) for r in rows[:1]], head=(0, chain.GENESIS)).kind == "inserted"
