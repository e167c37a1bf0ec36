"""Unit-test fixtures: an in-memory CA key stands in for the token (ca_core never talks to one)."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ca_core.algorithms import algorithm_for
from ca_core.ca import Issuer
from ca_core.clock import UTC
from ca_core.names import build_name
from ca_core.profiles import assemble_certificate, root_tbs

NOW = dt.datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)


def software_sign(key, alg, tbs_der: bytes) -> bytes:
    """What the token does, with an in-memory key: sign the host-computed digest."""
    h = alg.new_hash()
    h.update(tbs_der)
    digest = h.digest()
    if alg.is_rsa:
        return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    return key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def make_issuer(ca_id: str = "signing", key_type: str = "rsa2048", generation: int = 1):
    key = (rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
           if key_type.startswith("rsa") else ec.generate_private_key(ec.SECP256R1()))
    alg = algorithm_for(key_type)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    name = build_name((("C", "JP"), ("O", "JPKI-TEST"), ("OU", f"JPKI {ca_id}")))
    tbs = root_tbs(ca_name=name, spki_der=spki, alg=alg, serial=12345, not_before=NOW,
                   not_after=NOW + dt.timedelta(days=3650))
    der = assemble_certificate(tbs.dump(), alg, software_sign(key, alg, tbs.dump()))
    return Issuer(db_id=1, ca_id=ca_id, generation=generation, key_label=f"{ca_id}-g{generation}", algorithm=alg,
                  certificate_der=der), key


@pytest.fixture(scope="session")
def signing_issuer():
    return make_issuer("signing")


@pytest.fixture(scope="session")
def auth_issuer():
    return make_issuer("auth")


@pytest.fixture(scope="session")
def ec_issuer():
    return make_issuer("signing", "ec-p256")


@pytest.fixture(scope="session")
def ee_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
