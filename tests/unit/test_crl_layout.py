"""What a host checks before serving a CRL copied from the database: the TBSCertList's range and the
signature read without touching the entries, the signature verified against the issuing CA's key;
anything else (truncated, extended, re-signed by another key, hostile DER) is refused with ValueError."""
from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings, strategies as st

from ca_core import crl as crl_core
from tests.unit.test_crl import _entries, _signer, _spec, ec_ca, rsa_ca  # noqa: F401 (fixtures)


def _reader(der: bytes):
    return lambda offset, size: der[offset:offset + size]


def _check(der: bytes, issuer) -> None:
    layout = crl_core.signed_layout(_reader(der), len(der))
    digest = hashlib.sha256(der[layout.tbs_start:layout.tbs_end]).digest()
    crl_core.verify_digest(issuer, layout, digest)


@pytest.mark.parametrize("n", [0, 1, 500])
def test_a_crl_checks_out_with_its_own_ca(rsa_ca, ec_ca, n):
    for key, issuer in (rsa_ca, ec_ca):
        der = crl_core.assemble(_spec(issuer), _entries(n), _signer(key))
        layout = crl_core.signed_layout(_reader(der), len(der))
        assert layout.algorithm == issuer.algorithm.identifier_der
        _check(der, issuer)


def test_another_key_a_changed_entry_or_a_wrong_size_is_refused(rsa_ca):
    key, issuer = rsa_ca
    der = crl_core.assemble(_spec(issuer), _entries(20), _signer(key))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = crl_core.assemble(_spec(issuer), _entries(20), _signer(other))
    with pytest.raises(ValueError, match="does not verify"):
        _check(forged, issuer)
    changed = bytearray(der)
    changed[len(der) // 2] ^= 1  # inside the entries
    with pytest.raises(ValueError):
        _check(bytes(changed), issuer)
    for wrong in (der[:-1], der + b"\x00"):
        with pytest.raises(ValueError):
            crl_core.signed_layout(_reader(wrong), len(wrong))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_bytes_raise_value_error_only(data):
    try:
        crl_core.signed_layout(_reader(data), len(data))
    except ValueError:
        pass


@settings(max_examples=300, deadline=None)
@given(index=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_octet_is_refused(rsa_ca, index, flip):
    key, issuer = rsa_ca
    der = _signed_once(rsa_ca)
    changed = bytearray(der)
    changed[index % len(der)] ^= flip
    with pytest.raises(ValueError):
        _check(bytes(changed), issuer)


_ONCE: dict = {}


def _signed_once(ca) -> bytes:
    key, issuer = ca
    if id(ca) not in _ONCE:
        _ONCE[id(ca)] = crl_core.assemble(_spec(issuer), _entries(5), _signer(key))
    return _ONCE[id(ca)]
