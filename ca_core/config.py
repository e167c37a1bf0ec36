"""Configuration model: frozen dataclasses, loaded from a TOML file and environment variables.

Unknown keys are rejected, values are checked once at load (ConfigError), and nothing else reads the
environment. Names of the CAs are configuration, never hard-coded in the profiles.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

CA_IDS = ("signing", "auth")
KEY_TYPES = ("rsa2048", "rsa3072", "rsa4096", "ec-p256")

# RDN attribute short names accepted in configured names.
NAME_ATTRS = ("C", "ST", "L", "O", "OU", "CN")


@dataclass(frozen=True)
class CAConfig:
    """One certificate authority (signing or user-authentication)."""

    subject: tuple[tuple[str, str], ...]
    issuer_alt_name: tuple[tuple[str, str], ...]
    policy_oid: str
    cps_uri: str
    key_type: str = "rsa2048"
    root_validity_days: int = 3650
    responder_validity_days: int = 30
    responder_renew_days: int = 7


def _default_ca(ou: str, policy: str, ian_ou: str) -> CAConfig:
    return CAConfig(
        subject=(("C", "JP"), ("O", "JPKI-TEST"), ("OU", ou),
                 ("OU", "Japan Agency for Local Authority Information Systems")),
        issuer_alt_name=(("C", "JP"), ("O", "公的個人認証サービス"), ("OU", ian_ou)),
        policy_oid=policy,
        cps_uri="http://127.0.0.1:8080/cps",
    )


@dataclass(frozen=True)
class CAs:
    signing: CAConfig = field(default_factory=lambda: _default_ca(
        "JPKI for digital signature", "1.2.392.200149.8.5.1.0.20", "署名用認証局"))
    auth: CAConfig = field(default_factory=lambda: _default_ca(
        "JPKI for user authentication", "1.2.392.200149.8.5.1.3.30", "利用者証明用認証局"))

    def get(self, ca_id: str) -> CAConfig:
        return getattr(self, ca_id)


@dataclass(frozen=True)
class HSMConfig:
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "shomei"
    pin_file: str | None = None  # a file holding the user PIN (mode 0600)
    pin_env: str = "SHOMEI_PKCS11_PIN"  # or an environment variable holding it


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    public_base_url: str = "http://127.0.0.1:8080"  # base of URLs put in certificates
    max_body_bytes: int = 65536
    db_pool_size: int = 16


@dataclass(frozen=True)
class IssuanceConfig:
    partition_size: int = 100_000  # certificates per CRL partition: <= 100k entries keeps a CRL < 10 MB
    rsa_key_sizes: tuple[int, ...] = (2048,)
    publish_deltas: bool = True  # adds freshestCRL to certificates
    renewal_window_days: int = 92


@dataclass(frozen=True)
class SecurityConfig:
    resident_hash_key_file: str | None = None  # HMAC key for resident codes


@dataclass(frozen=True)
class OCSPConfig:
    """The OCSP responder (ocsp_responder/). JPKI refreshes its answers every 15 minutes; ours state
    the status of the moment they are signed and live at most ``validity_seconds``."""

    access: str = "open"  # open | verifier (registered verifiers with a bearer credential)
    validity_seconds: int = 900  # nextUpdate - thisUpdate
    refresh_seconds: int = 300  # a cached answer older than this is signed anew on the next request
    max_certs_per_request: int = 10
    max_request_bytes: int = 4096  # POST body; a GET path is bounded to the base64 of this
    max_pending_signatures: int = 256  # per process; beyond it answers are tryLater
    cache_entries: int = 50_000  # signed answers kept in each process's memory
    usage_flush_seconds: int = 5  # per-verifier answer counts are written to the database this often
    verifier_metric_labels: int = 50  # verifiers named in /metrics per process; the rest count as "other"
    renew_check_seconds: int = 3600  # how often each process renews responder certificates near expiry
    reload_seconds: int = 60  # how often each process picks up new responder certificates and CA keys


@dataclass(frozen=True)
class RevocationConfig:
    """Window revocations, the resident-register feed and the online window."""

    feed_max_body_bytes: int = 64 * 1024 * 1024  # a batch of 100,000 events is about 15 MB of JSON
    feed_max_events: int = 200_000
    feed_chunk_events: int = 25_000  # events applied per transaction
    online_max_body_bytes: int = 16384  # an application (certificate + signature + JSON) is about 3 KB
    online_max_in_flight: int = 32  # online requests handled at once by a process; more answer busy
    online_retry_after: int = 5  # seconds, Retry-After of a busy answer
    online_max_skew_seconds: int = 600  # issued_at further than this from now is stale
    nonce_retention_days: int = 7


@dataclass(frozen=True)
class CRLConfig:
    """The CRL publisher (crl_publisher/): complete (full and partition) CRLs and deltas."""

    output_dir: str | None = None  # published files; default {var_dir}/crl (share it between web hosts)
    full_interval_minutes: int = 24 * 60  # complete CRLs (full and partitions) are issued this often
    full_validity_minutes: int = 48 * 60  # nextUpdate - thisUpdate of complete CRLs
    delta_interval_minutes: int = 15
    delta_validity_minutes: int = 30
    schedule: bool = True  # `shomei serve` publishes on this schedule (worker 0 of each host)
    tick_seconds: int = 30  # how often the scheduler looks for due work
    page_rows: int = 100_000  # entries per round trip when streaming from PostgreSQL (about 5 MB)
    stream_connections: int = 2  # connections streaming one CRL in parallel (same snapshot)


@dataclass(frozen=True)
class Config:
    database_url: str | None = None
    var_dir: str = "var"
    hsm: HSMConfig = field(default_factory=HSMConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    issuance: IssuanceConfig = field(default_factory=IssuanceConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    crl: CRLConfig = field(default_factory=CRLConfig)
    revocation: RevocationConfig = field(default_factory=RevocationConfig)
    ca: CAs = field(default_factory=CAs)
    ocsp: OCSPConfig = field(default_factory=OCSPConfig)

    @property
    def embedded(self) -> bool:
        """No DATABASE_URL: run the embedded PostgreSQL cluster and SoftHSM token under var/."""
        return self.database_url is None

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list")
        inner = args[0]
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None:
            return None
        return _coerce([a for a in args if a is not type(None)][0], value, where)
    if hint in (int, str, bool) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return value


def validate(cfg: Config) -> Config:
    """Check cross-field rules once; raises ConfigError."""
    for ca_id in CA_IDS:
        ca = cfg.ca.get(ca_id)
        if ca.key_type not in KEY_TYPES:
            raise ConfigError(f"ca.{ca_id}.key_type must be one of {', '.join(KEY_TYPES)}")
        for attr, _v in ca.subject + ca.issuer_alt_name:
            if attr not in NAME_ATTRS:
                raise ConfigError(f"ca.{ca_id}: name attribute {attr!r} not one of {NAME_ATTRS}")
        if not ca.subject:
            raise ConfigError(f"ca.{ca_id}.subject must not be empty")
        if ca.responder_renew_days >= ca.responder_validity_days:
            raise ConfigError(f"ca.{ca_id}.responder_renew_days must be less than responder_validity_days")
    if cfg.ca.signing.subject == cfg.ca.auth.subject:
        raise ConfigError("the signing and auth CAs must have different names")
    if not 1 <= cfg.issuance.partition_size <= 130_000:
        raise ConfigError("issuance.partition_size must be 1..130000 (a partition CRL stays under 10 MB)")
    if not all(bits in (2048, 3072, 4096) for bits in cfg.issuance.rsa_key_sizes):
        raise ConfigError("issuance.rsa_key_sizes: only 2048, 3072, 4096")
    ocsp = cfg.ocsp
    if ocsp.access not in ("open", "verifier"):
        raise ConfigError("ocsp.access must be 'open' or 'verifier'")
    if not 0 < ocsp.refresh_seconds < ocsp.validity_seconds:
        raise ConfigError("ocsp.refresh_seconds must be positive and less than ocsp.validity_seconds")
    if not 1 <= ocsp.max_certs_per_request <= 100 or ocsp.max_request_bytes < 256:
        raise ConfigError("ocsp.max_certs_per_request must be 1..100 and ocsp.max_request_bytes >= 256")
    rv = cfg.revocation
    if min(rv.feed_max_body_bytes, rv.feed_max_events, rv.feed_chunk_events, rv.online_max_body_bytes,
           rv.online_max_in_flight, rv.online_retry_after, rv.online_max_skew_seconds) < 1:
        raise ConfigError("revocation.*: every limit must be at least 1")
    c = cfg.crl
    if min(c.full_interval_minutes, c.delta_interval_minutes, c.tick_seconds, c.page_rows,
           c.stream_connections) < 1:
        raise ConfigError("crl.*_interval_minutes, tick_seconds, page_rows, stream_connections must be at least 1")
    if c.full_validity_minutes <= c.full_interval_minutes or c.delta_validity_minutes <= c.delta_interval_minutes:
        raise ConfigError("crl.*_validity_minutes must exceed the matching interval (no gap between issues)")
    if cfg.server.workers < 1:
        raise ConfigError("server.workers must be >= 1")
    return cfg


def load(path: str | os.PathLike | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Load configuration: defaults, then the TOML file (SHOMEI_CONFIG), then environment overrides.

    Environment: DATABASE_URL, SHOMEI_PKCS11_MODULE, SHOMEI_PKCS11_TOKEN, SHOMEI_PKCS11_PIN_FILE,
    SHOMEI_LISTEN (host:port), SHOMEI_PUBLIC_URL, SHOMEI_VAR_DIR, SHOMEI_WORKERS, SHOMEI_RESIDENT_KEY_FILE.
    """
    env = os.environ if env is None else env
    data: dict = {}
    path = path or env.get("SHOMEI_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path}: {exc}") from None
    cfg = _build(Config, data, "config")
    hsm, server = cfg.hsm, cfg.server
    if "DATABASE_URL" in env:
        cfg = cfg.replace(database_url=env["DATABASE_URL"] or None)
    if "SHOMEI_VAR_DIR" in env:
        cfg = cfg.replace(var_dir=env["SHOMEI_VAR_DIR"])
    hsm = dataclasses.replace(
        hsm,
        module=env.get("SHOMEI_PKCS11_MODULE", hsm.module),
        token_label=env.get("SHOMEI_PKCS11_TOKEN", hsm.token_label),
        pin_file=env.get("SHOMEI_PKCS11_PIN_FILE", hsm.pin_file),
    )
    if "SHOMEI_LISTEN" in env:
        host, _, port = env["SHOMEI_LISTEN"].rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("SHOMEI_LISTEN must be host:port")
        server = dataclasses.replace(server, host=host, port=int(port))
    if "SHOMEI_PUBLIC_URL" in env:
        server = dataclasses.replace(server, public_base_url=env["SHOMEI_PUBLIC_URL"].rstrip("/"))
    if "SHOMEI_WORKERS" in env:
        server = dataclasses.replace(server, workers=int(env["SHOMEI_WORKERS"]))
    if "SHOMEI_RESIDENT_KEY_FILE" in env:
        cfg = cfg.replace(security=dataclasses.replace(cfg.security, resident_hash_key_file=env["SHOMEI_RESIDENT_KEY_FILE"]))
    return validate(cfg.replace(hsm=hsm, server=server))
