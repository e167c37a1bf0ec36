"""The fast decoder of the common request shape (ca_core.ocsp._parse_fast) against the general one
(_parse, asn1crypto): whatever the fast one accepts, the general one accepts with the same result."""
from __future__ import annotations

import os

from asn1crypto import core
from asn1crypto import ocsp as aocsp
from hypothesis import given, settings
from hypothesis import strategies as st

from ca_core import ocsp as core_ocsp
from ca_core.ocsp import ResponseStatus, parse_request

SHA1 = {"algorithm": "sha1", "parameters": core.Null()}
SHA1_NO_PARAMS = {"algorithm": "sha1"}
SHA256 = {"algorithm": "sha256", "parameters": core.Null()}
HASH_LEN = {"sha1": 20, "sha256": 32}


def _slow(der: bytes, max_certs: int = 10):
    try:
        return core_ocsp._parse(der, max_certs)
    except Exception:
        return ResponseStatus.malformed_request


def _request(certs, nonce=None, *, critical=False, version=None, extra_ext=False, single_ext=False) -> bytes:
    items = []
    for alg, serial in certs:
        name = alg["algorithm"]
        item = {"req_cert": {"hash_algorithm": alg, "issuer_name_hash": b"n" * HASH_LEN.get(name, 20),
                             "issuer_key_hash": b"k" * HASH_LEN.get(name, 20), "serial_number": serial}}
        if single_ext:
            item["single_request_extensions"] = [{"extn_id": "1.2.3.4", "critical": False,
                                                   "extn_value": b"\x05\x00"}]
        items.append(item)
    tbs = {"request_list": items}
    if version is not None:
        tbs["version"] = version
    exts = []
    if nonce is not None:
        exts.append({"extn_id": "nonce", "critical": critical, "extn_value": core.OctetString(nonce)})
    if extra_ext:
        exts.append({"extn_id": "acceptable_responses", "critical": False, "extn_value": ["basic_ocsp_response"]})
    if exts:
        tbs["request_extensions"] = exts
    return aocsp.OCSPRequest({"tbs_request": tbs}).dump(force=True)


def _check(der: bytes, max_certs: int = 10, expect_fast: bool | None = None):
    fast = core_ocsp._parse_fast(der, max_certs)
    slow = _slow(der, max_certs)
    if fast is not None:
        assert fast == slow, (der.hex(), fast, slow)
    if expect_fast is not None:
        assert (fast is not None) == expect_fast, der.hex()
    assert parse_request(der, max_certs=max_certs) == slow


def test_common_shapes_take_the_fast_path():
    for alg in (SHA1, SHA1_NO_PARAMS, SHA256):
        for serial in (0, 1, 127, 128, 255, 256, 2**127 + 5, 2**159 - 1, -1, -129):
            _check(_request([(alg, serial)]), expect_fast=True)
            _check(_request([(alg, serial)], os.urandom(16)), expect_fast=True)
    _check(_request([(SHA1, 7), (SHA256, 8), (SHA1, 9)], b"\x01"), expect_fast=True)
    _check(_request([(SHA1, 7)], b"x" * 32), expect_fast=True)


def test_other_shapes_go_to_the_general_decoder():
    for der in (_request([(SHA1, 7)], b""), _request([(SHA1, 7)], b"x" * 33),
                _request([(SHA1, 7)], b"abc", critical=True), _request([(SHA1, 7)], b"abc", extra_ext=True),
                _request([(SHA1, 7)], version=5),
                _request([(SHA1, 7)], single_ext=True),
                _request([({"algorithm": "md5", "parameters": core.Null()}, 7)]),
                _request([(SHA1, 7)] * 11),
                _request([(SHA1, 7)]) + b"\x00", b"", b"\x30\x00", b"\x30\x80\x00\x00"):
        _check(der, expect_fast=False)
    _check(_request([(SHA1, 7)] * 3), max_certs=2, expect_fast=False)
    _check(_request([(SHA1, 7)], version="v1"))  # DEFAULT: left out of the DER


def test_non_minimal_lengths_and_integers_go_to_the_general_decoder():
    der = _request([(SHA1, 7)])
    # the outer length in long form (0x81 0x..) where one octet would do: not DER
    assert der[1] < 0x80
    _check(b"\x30\x81" + der[1:2] + der[2:], expect_fast=False)
    # serial 7 as 00 07, and -1 as FF FF: valid BER, not DER
    from ca_core import der as d
    for serial in (b"\x00\x07", b"\xff\xff"):
        cid = d.sequence(d.sequence(b"\x06\x05\x2b\x0e\x03\x02\x1a\x05\x00"), d.octet_string(b"n" * 20),
                         d.octet_string(b"k" * 20), d.tlv(0x02, serial))
        _check(d.sequence(d.sequence(d.sequence(d.sequence(cid)))), expect_fast=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([SHA1, SHA1_NO_PARAMS, SHA256]), st.integers(-2**160, 2**160)),
                min_size=1, max_size=4),
       st.one_of(st.none(), st.binary(min_size=0, max_size=40)), st.booleans(), st.booleans(),
       st.integers(1, 5))
def test_generated_requests_agree(certs, nonce, critical, extra, max_certs):
    _check(_request(certs, nonce, critical=critical, extra_ext=extra), max_certs=max_certs)


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_mutated_requests_agree(data):
    certs = data.draw(st.lists(st.tuples(st.sampled_from([SHA1, SHA256]), st.integers(1, 2**128)),
                               min_size=1, max_size=3))
    der = bytearray(_request(certs, data.draw(st.one_of(st.none(), st.binary(min_size=1, max_size=32)))))
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = data.draw(st.integers(0, max(0, len(der) - 1)))
        if kind == "flip" and der:
            der[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and der:
            der[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del der[at:]
        elif kind == "insert":
            der[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete" and der:
            del der[at]
    _check(bytes(der))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_agree(blob):
    _check(blob)
    _check(b"\x30" + bytes((len(blob),)) + blob if len(blob) < 128 else blob)
