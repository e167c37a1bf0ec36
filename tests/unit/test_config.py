"""Configuration models: defaults, TOML overrides, strict types, environment variables, replace()."""
from __future__ import annotations

import pydantic
import pytest

from ca_core import config
from ca_core.errors import ConfigError

FULL = """
database_url = "postgresql://shomei@db/shomei"
var_dir = "/srv/shomei"

[hsm]
module = "/opt/hsm/libpkcs11.so"
token_label = "prod"
pin_file = "/etc/shomei/pin"
pin_env = "HSM_PIN"

[server]
host = "0.0.0.0"
port = 9443
workers = 4
public_base_url = "https://ca.example.jp"
max_body_bytes = 131072
db_pool_size = 8

[issuance]
partition_size = 50000
rsa_key_sizes = [2048, 4096]
publish_deltas = false
renewal_window_days = 60

[security]
resident_hash_key_file = "/etc/shomei/resident.key"

[crl]
output_dir = "/srv/crl"
full_interval_minutes = 720
full_validity_minutes = 1440
delta_interval_minutes = 10
delta_validity_minutes = 20
schedule = false
tick_seconds = 10
page_rows = 5000
stream_connections = 3

[revocation]
feed_max_body_bytes = 1048576
feed_max_events = 1000
feed_chunk_events = 100
online_max_body_bytes = 8192
online_max_in_flight = 4
online_retry_after = 2
online_max_skew_seconds = 60
nonce_retention_days = 3

[ocsp]
access = "verifier"
validity_seconds = 600
refresh_seconds = 120
max_certs_per_request = 5
max_request_bytes = 2048
max_pending_signatures = 64
cache_entries = 1000
usage_flush_seconds = 2
verifier_metric_labels = 10
renew_check_seconds = 600
reload_seconds = 30

[ca.signing]
subject = [["C", "JP"], ["O", "Example"], ["OU", "Sign"]]
issuer_alt_name = [["C", "JP"], ["O", "例"]]
policy_oid = "1.2.3.4"
cps_uri = "https://ca.example.jp/cps"
key_type = "rsa3072"
root_validity_days = 7300
responder_validity_days = 20
responder_renew_days = 5

[ca.auth]
subject = [["C", "JP"], ["O", "Example"], ["OU", "Auth"]]
issuer_alt_name = []
policy_oid = "1.2.3.5"
cps_uri = "https://ca.example.jp/cps"
key_type = "ec-p256"
"""

CA_AUTH = ('[ca.auth]\nsubject = [["C", "JP"], ["O", "X"]]\nissuer_alt_name = []\npolicy_oid = "1.2"\n'
           'cps_uri = "u"\n')


@pytest.fixture
def toml(tmp_path):
    def write(text: str):
        path = tmp_path / "shomei.toml"
        path.write_text(text, encoding="utf-8")
        return path
    return write


def test_defaults_with_an_empty_environment():
    cfg = config.load(env={})
    assert isinstance(cfg, config.Config)
    assert cfg.embedded and cfg.database_url is None and cfg.var_dir == "var"
    assert cfg.hsm == config.HSMConfig() and cfg.hsm.pin_file is None
    assert (cfg.server.host, cfg.server.port, cfg.server.workers) == ("127.0.0.1", 8080, 1)
    assert cfg.issuance.rsa_key_sizes == (2048,) and cfg.issuance.publish_deltas is True
    assert cfg.ocsp.access == "open" and cfg.ocsp.validity_seconds == 900
    assert cfg.crl.schedule is True and cfg.crl.output_dir is None
    assert cfg.revocation == config.RevocationConfig()
    assert cfg.security.resident_hash_key_file is None
    for ca_id in config.CA_IDS:
        ca = cfg.ca.get(ca_id)
        assert ca.key_type == "rsa2048" and ca.key_type in config.KEY_TYPES
        assert all(isinstance(pair, tuple) and len(pair) == 2 for pair in ca.subject + ca.issuer_alt_name)
        assert all(attr in config.NAME_ATTRS for attr, _ in ca.subject)
    assert cfg == config.load(env={}) and hash(cfg) == hash(config.load(env={}))


def test_every_section_is_overridden_by_the_file(toml):
    cfg = config.load(toml(FULL), env={})
    assert not cfg.embedded
    assert cfg.database_url == "postgresql://shomei@db/shomei" and cfg.var_dir == "/srv/shomei"
    assert cfg.hsm == config.HSMConfig(module="/opt/hsm/libpkcs11.so", token_label="prod",
                                       pin_file="/etc/shomei/pin", pin_env="HSM_PIN")
    assert cfg.server == config.ServerConfig(host="0.0.0.0", port=9443, workers=4,
                                             public_base_url="https://ca.example.jp", max_body_bytes=131072,
                                             db_pool_size=8)
    assert cfg.issuance.rsa_key_sizes == (2048, 4096)  # a TOML array becomes a tuple
    assert cfg.issuance.partition_size == 50000 and cfg.issuance.publish_deltas is False
    assert cfg.security.resident_hash_key_file == "/etc/shomei/resident.key"
    assert cfg.crl.output_dir == "/srv/crl" and cfg.crl.schedule is False and cfg.crl.stream_connections == 3
    assert cfg.revocation.feed_chunk_events == 100 and cfg.revocation.nonce_retention_days == 3
    assert cfg.ocsp.access == "verifier" and cfg.ocsp.refresh_seconds == 120 and cfg.ocsp.reload_seconds == 30
    signing = cfg.ca.get("signing")
    assert signing.subject == (("C", "JP"), ("O", "Example"), ("OU", "Sign"))
    assert signing.issuer_alt_name == (("C", "JP"), ("O", "例"))
    assert (signing.key_type, signing.root_validity_days, signing.responder_renew_days) == ("rsa3072", 7300, 5)
    auth = cfg.ca.get("auth")
    assert auth.issuer_alt_name == () and auth.key_type == "ec-p256" and auth.responder_validity_days == 30


def test_environment_overrides_the_file(toml, tmp_path):
    cfg = config.load(env={
        "SHOMEI_CONFIG": str(toml(FULL)), "DATABASE_URL": "", "SHOMEI_VAR_DIR": "/var/x",
        "SHOMEI_PKCS11_MODULE": "/m.so", "SHOMEI_PKCS11_TOKEN": "t", "SHOMEI_PKCS11_PIN_FILE": "/p",
        "SHOMEI_LISTEN": "[::1]:8443", "SHOMEI_PUBLIC_URL": "https://x.example/", "SHOMEI_WORKERS": "3",
        "SHOMEI_RESIDENT_KEY_FILE": "/k"})
    assert cfg.embedded and cfg.var_dir == "/var/x"  # an empty DATABASE_URL means embedded
    assert (cfg.hsm.module, cfg.hsm.token_label, cfg.hsm.pin_file, cfg.hsm.pin_env) == ("/m.so", "t", "/p", "HSM_PIN")
    assert (cfg.server.host, cfg.server.port, cfg.server.workers) == ("[::1]", 8443, 3)
    assert cfg.server.public_base_url == "https://x.example" and cfg.server.db_pool_size == 8
    assert cfg.security.resident_hash_key_file == "/k"
    assert cfg.ocsp.access == "verifier"  # untouched sections keep the file's values


@pytest.mark.parametrize("text, named", [
    ("[ocsp]\nfoo = 1\n", "config.ocsp: unknown key(s) foo"),
    ("[ocsp]\nzeta = 1\nalpha = 2\n", "config.ocsp: unknown key(s) alpha, zeta"),
    ("[server]\nport = 9000\nprot = 1\n", "config.server: unknown key(s) prot"),
    ("[ca.signing]\ncolour = 1\n", "config.ca.signing: unknown key(s) colour"),  # before missing keys
    ('[server]\nprot = 1\nport = "x"\n', "config.server: unknown key(s) prot"),
    ("[ca.rogue]\nx = 1\n", "config.ca: unknown key(s) rogue"),
    ("listen = 1\n", "config: unknown key(s) listen"),
])
def test_unknown_keys_are_named(toml, text, named):
    with pytest.raises(ConfigError) as err:
        config.load(toml(text), env={})
    assert err.value.message == named


@pytest.mark.parametrize("text, key", [
    ('[server]\nport = "8080"\n', "config.server.port"),
    ("[server]\nport = 8080.0\n", "config.server.port"),
    ("[server]\nworkers = true\n", "config.server.workers"),
    ("[crl]\nschedule = 1\n", "config.crl.schedule"),
    ("[issuance]\npublish_deltas = \"yes\"\n", "config.issuance.publish_deltas"),
    ("[issuance]\nrsa_key_sizes = 2048\n", "config.issuance.rsa_key_sizes"),
    ('[issuance]\nrsa_key_sizes = [2048, "3072"]\n', "config.issuance.rsa_key_sizes[1]"),
    ("[hsm]\npin_file = 5\n", "config.hsm.pin_file"),
    ("var_dir = 1\n", "config.var_dir"),
    ("server = 5\n", "config.server"),
    (CA_AUTH.replace('["O", "X"]', '["O", 1]'), "config.ca.auth.subject[1][1]"),
    (CA_AUTH.replace('["O", "X"]', '["O"]'), "config.ca.auth.subject[1][1]"),  # a pair, not one item
])
def test_wrong_types_are_named(toml, text, key):
    with pytest.raises(ConfigError) as err:
        config.load(toml(text), env={})
    assert err.value.message.startswith(key + ":")
    assert err.value.field == key


def test_missing_ca_field_is_named(toml):
    with pytest.raises(ConfigError, match=r"config\.ca\.auth\.policy_oid: Field required"):
        config.load(toml(CA_AUTH.replace('policy_oid = "1.2"\n', "")), env={})


@pytest.mark.parametrize("text, key", [
    (CA_AUTH + 'key_type = "rsa1024"\n', "config.ca.auth.key_type"),
    ('[ocsp]\naccess = "closed"\n', "config.ocsp.access"),
])
def test_literal_violations(toml, text, key):
    with pytest.raises(ConfigError) as err:
        config.load(toml(text), env={})
    assert err.value.message.startswith(key + ":")


@pytest.mark.parametrize("env, var", [
    ({"SHOMEI_WORKERS": "abc"}, "SHOMEI_WORKERS"),
    ({"SHOMEI_WORKERS": "0"}, "SHOMEI_WORKERS"),
    ({"SHOMEI_WORKERS": "-2"}, "SHOMEI_WORKERS"),
    ({"SHOMEI_LISTEN": "bad"}, "SHOMEI_LISTEN"),
    ({"SHOMEI_LISTEN": "host:notaport"}, "SHOMEI_LISTEN"),
    ({"SHOMEI_LISTEN": ":8080"}, "SHOMEI_LISTEN"),
])
def test_bad_environment_variables_are_named(env, var):
    with pytest.raises(ConfigError) as err:
        config.load(env=env)
    assert err.value.message.startswith(var) and err.value.field == var


def test_no_validation_error_escapes_load(toml):
    for text in ("[server]\nport = []\n", "ca = 1\n", "[ca.signing]\nsubject = 3\n", "[crl]\n[crl.x]\n"):
        with pytest.raises(ConfigError):
            config.load(toml(text), env={})


def test_file_errors(toml, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="configuration file"):
        config.load(toml("[server\n"), env={})


def test_cross_field_rules_still_apply(toml):
    with pytest.raises(ConfigError, match="ocsp.refresh_seconds must be positive"):
        config.load(toml("[ocsp]\nrefresh_seconds = 900\n"), env={})
    with pytest.raises(ConfigError, match="issuance.rsa_key_sizes: only 2048, 3072, 4096"):
        config.load(toml("[issuance]\nrsa_key_sizes = [1024]\n"), env={})
    with pytest.raises(ConfigError, match="name attribute 'XX'"):
        config.load(toml(CA_AUTH.replace('"O", "X"', '"XX", "X"')), env={})


def test_config_objects_are_frozen():
    cfg = config.load(env={})
    for obj, name, value in [(cfg, "var_dir", "x"), (cfg.server, "port", 1), (cfg.ca.signing, "key_type", "ec-p256"),
                             (cfg.ca, "auth", cfg.ca.signing), (cfg.ocsp, "access", "verifier")]:
        with pytest.raises(pydantic.ValidationError, match="frozen"):
            setattr(obj, name, value)
    assert cfg.var_dir == "var" and cfg.server.port == 8080


@pytest.mark.parametrize("model", [config.Config, config.CAs, config.HSMConfig, config.ServerConfig,
                                   config.IssuanceConfig, config.SecurityConfig, config.OCSPConfig,
                                   config.RevocationConfig, config.CRLConfig])
def test_every_model_has_replace(model):
    obj = model()
    assert obj.replace() == obj and obj.replace() is not obj
    with pytest.raises(ConfigError, match="unknown key"):
        obj.replace(no_such_field=1)


def test_replace_returns_a_validated_copy():
    cfg = config.load(env={})
    hsm = cfg.hsm.replace(module="/other.so", pin_file="/pin")
    assert isinstance(hsm, config.HSMConfig) and hsm.module == "/other.so" and hsm.pin_file == "/pin"
    assert cfg.hsm.module == config.HSMConfig().module  # the original is unchanged
    cfg2 = cfg.replace(hsm=hsm, database_url="postgresql://h/db")
    assert cfg2.hsm is hsm and not cfg2.embedded and cfg.embedded
    assert cfg.issuance.replace(rsa_key_sizes=[3072]).rsa_key_sizes == (3072,)
    signing = cfg.ca.signing.replace(subject=[["C", "JP"], ["CN", "x"]], key_type="rsa4096")
    assert signing.subject == (("C", "JP"), ("CN", "x")) and signing.key_type == "rsa4096"
    with pytest.raises(ConfigError, match=r"ServerConfig\.port"):
        cfg.server.replace(port="8080")
    with pytest.raises(ConfigError, match=r"CAConfig\.key_type"):
        cfg.ca.signing.replace(key_type="rsa1024")
    with pytest.raises(ConfigError, match=r"Config\.hsm"):
        cfg.replace(hsm="nope")
    with pytest.raises(ConfigError, match="unknown key.*modul"):
        cfg.hsm.replace(modul="/x.so")


def test_cas_get():
    cas = config.load(env={}).ca
    assert cas.get("signing") is cas.signing and cas.get("auth") is cas.auth
    assert cas.get("signing").policy_oid != cas.get("auth").policy_oid
    assert set(config.CA_IDS) == set(config.CAs.model_fields)
