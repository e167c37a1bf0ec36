"""Operator commands on the embedded default: the ceremony is idempotent, `ca list` shows fingerprints,
a rollover adds a generation with the same name and a new key, and no command leaves PostgreSQL running."""
from __future__ import annotations

import subprocess

import pytest

from shomei.embedded import free_port
from tests.e2e.test_embedded_serve import EXE, _env


def _run(env, *args):
    res = subprocess.run([EXE, *args], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _pg_running(var) -> bool:
    return (var / "pg" / "data" / "postmaster.pid").exists()


@pytest.mark.slow
def test_ceremony_list_rollover(tmp_path):
    var = tmp_path / "var"
    env = _env(var, free_port(), free_port())
    out = _run(env, "ceremony")
    assert "created CA signing generation 1" in out and "created CA auth generation 1" in out
    assert "OCSP responder" in out
    assert not _pg_running(var)
    assert "nothing to do" in _run(env, "ceremony")

    listing = _run(env, "ca", "list")
    assert listing.count("SHA-256") == 2 and "signing  g1 current" in listing

    plan = _run(env, "ca", "rollover", "--ca", "signing", "--plan")
    assert "would create: CA signing generation 2, key shomei-signing-g2" in plan
    assert "rollover due" in plan and "retires on" in plan and "g1 <-> g2" in plan
    assert "g2" not in _run(env, "ca", "list")  # nothing was written
    assert "rollover due" in listing and "OCSP responder until" in listing
    assert "generation 2 is now current" in _run(env, "ca", "rollover", "--ca", "signing")
    listing = _run(env, "ca", "list")
    assert "signing  g1 previous" in listing and "signing  g2 current" in listing and "auth     g1 current" in listing
    assert "link new-with-old (g1 <-> g2): /ca/signing/g2/new-with-old.crt" in listing
    assert "link old-with-new (g1 <-> g2): /ca/signing/g2/old-with-new.crt" in listing
    assert not _pg_running(var)

    # both generations carry the same name and different keys
    blocks = [b for b in listing.split("\n") if b.startswith("signing")]
    names = [listing.split("\n")[i + 2] for i, line in enumerate(listing.split("\n")) if line.startswith("signing")]
    key_ids = [line.split("key id ")[1].split()[0] for line in blocks]
    assert len(set(names)) == 1 and "JPKI for digital signature" in names[0]
    assert len(set(key_ids)) == 2

    # each generation publishes its own CRLs, signed by its own key, under the same name
    _run(env, "crl", "publish", "--ca", "signing", "--no-progress")
    from cryptography import x509 as cx509
    crls = {g: cx509.load_der_x509_crl((var / "crl" / "signing" / g / "full.crl").read_bytes()) for g in ("g1", "g2")}
    assert crls["g1"].issuer == crls["g2"].issuer
    akis = {g: c.extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier).value.key_identifier.hex()
            for g, c in crls.items()}
    assert sorted(akis.values()) == sorted(key_ids)
    assert akis["g1"] != akis["g2"]
