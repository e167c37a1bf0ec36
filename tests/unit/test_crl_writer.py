"""crl_publisher's file writer: whatever room it guesses for the headers, the file is the same DER
as an in-memory assembly; a failed issue leaves nothing behind and the previous file in place."""
from __future__ import annotations

import os

import pytest

from ca_core import crl as crl_core
from crl_publisher.publisher import _Writer
from tests.unit import test_crl as _crl_tests
from tests.unit.test_crl import _entries, _signer, _spec

ec_ca, rsa_ca = _crl_tests.ec_ca, _crl_tests.rsa_ca  # the fixtures of test_crl.py


def _files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n != ".lock")  # .lock: between processes replacing files


async def _write(path, spec, entries, key, hint, pages=3):
    w = _Writer(path, spec, hint)
    step = max(1, len(entries) // pages)
    for i in range(0, len(entries), step):
        chunk = entries[i:i + step]
        await w.add(len(chunk), b"".join(chunk))
    digest = await w.finish_tbs()
    tbs = crl_core.tbs_header(spec, len(entries), sum(map(len, entries))) + b"".join(entries) + crl_core.tbs_trailer(spec)
    h = spec.algorithm.new_hash()
    h.update(tbs)
    assert digest == h.digest()
    size = await w.seal(_signer(key)(tbs))
    # The database's copy: the head, the entries as they were added, the tail, make the same file.
    assert w.head + b"".join(entries) + w.tail == w.tmp.read_bytes()
    await w.install()
    return size


@pytest.mark.parametrize("n", [0, 1, 100, 3000])
@pytest.mark.parametrize("hint", [0, 10, 1 << 20, 1 << 30])
async def test_any_size_hint_gives_the_same_crl(tmp_path, rsa_ca, n, hint):
    key, issuer = rsa_ca
    spec = _spec(issuer)
    entries = _entries(n)
    path = tmp_path / "full.crl"
    size = await _write(path, spec, entries, key, hint)
    expected = crl_core.assemble(spec, entries, _signer(key))  # RSA PKCS#1 v1.5 is deterministic
    assert path.read_bytes() == expected and size == len(expected)
    assert os.path.getmtime(path) == spec.this_update.timestamp()
    assert _files(tmp_path) == ["full.crl"]


async def test_ecdsa_signature_shorter_than_reserved(tmp_path, ec_ca):
    from cryptography import x509

    key, issuer = ec_ca
    spec = _spec(issuer)
    for i in range(6):
        await _write(tmp_path / "e.crl", spec, _entries(50), key, 0)
        crl = x509.load_der_x509_crl((tmp_path / "e.crl").read_bytes())
        assert crl.is_signature_valid(key.public_key()) and len(crl) == 50


async def test_previous_issue_is_kept_and_abort_leaves_no_file(tmp_path, rsa_ca):
    key, issuer = rsa_ca
    path = tmp_path / "p.crl"
    await _write(path, _spec(issuer, number=1), _entries(5), key, 0)
    first = path.read_bytes()
    await _write(path, _spec(issuer, number=2), _entries(6), key, 0)
    assert (tmp_path / "p.crl.prev").read_bytes() == first
    w = _Writer(path, _spec(issuer, number=3), 0)
    await w.add(1, _entries(1)[0])
    w.abort()
    assert _files(tmp_path) == ["p.crl", "p.crl.prev"]


async def test_outer_length_octets_shrink_with_a_short_ecdsa_signature(tmp_path, ec_ca):
    """Room is reserved for the longest ECDSA-Sig-Value; when the CRL sits at a DER length boundary
    (256 octets) and the signature comes out shorter, the file is shifted into valid DER."""
    from cryptography import x509

    key, issuer = ec_ca
    max_suffix = crl_core.max_suffix_length(issuer.algorithm)
    for number in range(1, 1 << 16):
        for n in range(0, 4):
            spec = _spec(issuer, number=number)
            entries = _entries(n)
            tbs_len = crl_core.tbs_length(spec, n, sum(map(len, entries)))
            if tbs_len + max_suffix == 256:
                break
        else:
            continue
        break
    else:
        pytest.skip("no CRL of exactly the boundary size in the search range")
    shifted = False
    for i in range(40):  # about half of P-256 signatures encode shorter than the maximum
        # a file of its own each time: a file is never replaced by a CRL of the same number
        size = await _write(tmp_path / f"b{i}.crl", spec, entries, key, 0)
        der = (tmp_path / f"b{i}.crl").read_bytes()
        assert len(der) == size
        crl = x509.load_der_x509_crl(der)
        assert crl.is_signature_valid(key.public_key()) and len(crl) == n
        shifted = shifted or der[1] == 0x81
        if shifted:
            break
    assert shifted
