"""Configuration loading, serial numbers and CRL entry encoding."""
from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import crl as acrl

from ca_core import config
from ca_core.clock import UTC
from ca_core.errors import ConfigError
from ca_core.revocation import Reason, encode_entry
from ca_core.serials import new_serial, parse_serial_hex, serial_bytes, serial_hex


def test_defaults_are_the_embedded_test_environment():
    cfg = config.load(env={})
    assert cfg.embedded
    assert ("O", "JPKI-TEST") in cfg.ca.signing.subject
    assert cfg.ca.signing.subject != cfg.ca.auth.subject


def test_unknown_key_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9000\nprot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        config.load(path, env={})


def test_wrong_type_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = "9000"\n')
    with pytest.raises(ConfigError, match="server.port"):
        config.load(path, env={})


def test_ca_names_are_configuration(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[ca.signing]\nsubject = [["C", "JP"], ["O", "Example"], ["OU", "Sign"]]\n'
                    'issuer_alt_name = [["C", "JP"]]\npolicy_oid = "1.2.3"\ncps_uri = "http://x/cps"\n'
                    'key_type = "ec-p256"\n')
    cfg = config.load(path, env={"DATABASE_URL": "postgresql://u@h/db", "SHOMEI_LISTEN": "0.0.0.0:9443"})
    assert cfg.ca.signing.subject == (("C", "JP"), ("O", "Example"), ("OU", "Sign"))
    assert cfg.ca.signing.key_type == "ec-p256"
    assert not cfg.embedded and cfg.server.port == 9443 and cfg.server.host == "0.0.0.0"


def test_bad_key_type_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[ca.auth]\nsubject = [["C", "JP"], ["O", "X"]]\nissuer_alt_name = []\npolicy_oid = "1.2"\n'
                    'cps_uri = "u"\nkey_type = "dsa"\n')
    with pytest.raises(ConfigError, match="key_type"):
        config.load(path, env={})


def test_serials_are_positive_16_octets_and_distinct():
    serials = {new_serial() for _ in range(2000)}
    assert len(serials) == 2000
    for s in serials:
        assert 0 < s < 2 ** 127
        assert len(serial_bytes(s)) == 16
        assert parse_serial_hex(serial_hex(s)) == s
    assert max(s.bit_length() for s in serials) == 127  # the top octet is random too


@pytest.mark.parametrize("text", ["", "0", "xyz", "-1", "f" * 41])
def test_bad_serial_text(text):
    with pytest.raises(ValueError):
        parse_serial_hex(text)


def test_entry_has_reason_and_invalidity_date():
    at = dt.datetime(2026, 11, 22, 1, 2, 3, tzinfo=UTC)
    inv = dt.datetime(2026, 11, 20, tzinfo=UTC)
    entry = acrl.RevokedCertificate.load(encode_entry(0xABCDEF, at, Reason.key_compromise, inv))
    assert entry["user_certificate"].native == 0xABCDEF
    assert entry["revocation_date"].native == at
    assert entry.crl_reason_value.native == "key_compromise"
    assert entry.invalidity_date_value.native == inv


def test_unspecified_reason_has_no_reason_code():
    entry = acrl.RevokedCertificate.load(encode_entry(5, dt.datetime(2026, 1, 1, tzinfo=UTC), Reason.unspecified))
    assert entry.crl_reason_value is None
    assert entry["crl_entry_extensions"].native in (None, [])
