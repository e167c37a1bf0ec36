"""Configuration of shomei: immutable pydantic models, loaded from a TOML file and environment variables.

``load()`` starts from the defaults (the embedded test environment), applies the TOML file and then a
fixed set of environment variables, and checks everything once: unknown keys, wrong types (validation
is strict: "8080" is not a port and ``true`` is not a number) and the cross-field rules of
``validate()``. Every problem is raised as ConfigError naming the key or the environment variable at
fault. Nothing else reads the environment. The names of the CAs are configuration, never hard-coded in
the profiles.
"""
from __future__ import annotations

import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from .errors import ConfigError

CA_IDS = ("signing", "auth")
KeyType = Literal["rsa2048", "rsa3072", "rsa4096", "ec-p256"]
KEY_TYPES: tuple[str, ...] = typing.get_args(KeyType)
OCSPAccess = Literal["open", "verifier"]

# RDN attribute short names accepted in configured names.
NAME_ATTRS = ("C", "ST", "L", "O", "OU", "CN")

# TOML has arrays, not tuples: these tuple fields accept a list (Strict(False) on the containers only;
# their items stay strictly typed).
IntTuple = Annotated[tuple[int, ...], Strict(False)]
StrTuple = Annotated[tuple[str, ...], Strict(False)]
NamePairs = Annotated[tuple[Annotated[tuple[str, str], Strict(False)], ...], Strict(False)]

_Self = typing.TypeVar("_Self", bound="_Section")


class _Section(BaseModel):
    """Base of every configuration model: unknown keys refused, immutable, strictly typed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def replace(self: _Self, **changes: typing.Any) -> _Self:
        """A validated copy with ``changes`` applied; raises ConfigError for an unknown field or a bad value."""
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(changes)
        return _validate(type(self), data, type(self).__name__)


class CAConfig(_Section):
    """One certificate authority (signing or user-authentication)."""

    subject: NamePairs  # (attribute, value) pairs, attributes from NAME_ATTRS
    issuer_alt_name: NamePairs
    policy_oid: str
    cps_uri: str
    key_type: KeyType = "rsa2048"
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


class CAs(_Section):
    signing: CAConfig = Field(default_factory=lambda: _default_ca(
        "JPKI for digital signature", "1.2.392.200149.8.5.1.0.20", "署名用認証局"))
    auth: CAConfig = Field(default_factory=lambda: _default_ca(
        "JPKI for user authentication", "1.2.392.200149.8.5.1.3.30", "利用者証明用認証局"))

    def get(self, ca_id: str) -> CAConfig:
        return getattr(self, ca_id)


class HSMConfig(_Section):
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "shomei"
    pin_file: str | None = None  # a file holding the user PIN (mode 0600)
    pin_env: str = "SHOMEI_PKCS11_PIN"  # or an environment variable holding it


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    public_base_url: str = "http://127.0.0.1:8080"  # base of URLs put in certificates
    max_body_bytes: int = 65536
    db_pool_size: int = 16
    # After a status change commits, its answer waits until every process's status listener applied it
    # (at most this long; 0 turns the wait off: other processes may then answer from before it for a
    # few milliseconds).
    status_sync_ms: int = 2000
    # The private listener: terminals, the resident-register feed and operations (metrics, detailed
    # health), HTTPS with client certificates of the operations CA required. The public listener above
    # (host, port) serves relying parties over plain HTTP: CRLs, OCSP, CA certificates.
    private_host: str = "127.0.0.1"
    private_port: int = 8443
    # false: the private listener speaks plain HTTP, for a TLS-terminating proxy in front of it that
    # verifies client certificates and passes the certificate's serial (hex) in
    # X-Client-Certificate-Serial. Only requests from trusted_proxies are then believed; there is no
    # default proxy.
    private_tls: bool = True
    trusted_proxies: StrTuple = ()
    tls_cert_file: str | None = None  # server certificate chain (PEM); default {var_dir}/tls/server.crt
    tls_key_file: str | None = None  # its key (PEM, 0600); default {var_dir}/tls/server.key
    client_ca_file: str | None = None  # CA(s) of client certificates; default {var_dir}/tls/operations-ca.pem
    tls_server_names: StrTuple = ("localhost", "127.0.0.1")  # put in a server certificate shomei makes
    client_certificate_days: int = 397  # validity of client certificates `shomei client add` issues


class IssuanceConfig(_Section):
    partition_size: int = 100_000  # certificates per CRL partition: <= 100k entries keeps a CRL < 10 MB
    rsa_key_sizes: IntTuple = (2048,)
    publish_deltas: bool = True  # adds freshestCRL to certificates
    renewal_window_days: int = 92
    # POST /v1/certificate-batches: at most this many issuances, in a body of at most this many bytes
    # (an issuance of two RSA-2048 CSRs is about 3 KB of JSON).
    batch_max_requests: int = 100
    batch_max_body_bytes: int = 2 * 1024 * 1024
    # authorityInfoAccess: id-ad-ocsp (the responder's URL) in every certificate; turn it off for a
    # deployment that keeps OCSP to registered verifiers. caIssuers is always there.
    ocsp_in_aia: bool = True


class SecurityConfig(_Section):
    resident_hash_key_file: str | None = None  # HMAC key for resident codes
    # The audit trail's head is signed (a checkpoint, by the audit key in the token) this often when it
    # moved; records after the last checkpoint are only as safe as the database.
    audit_checkpoint_seconds: int = 10


class OCSPConfig(_Section):
    """The OCSP responder (ocsp_responder/). JPKI refreshes its answers every 15 minutes; ours state
    the status of the moment they are signed and live at most ``validity_seconds``."""

    access: OCSPAccess = "open"  # open | verifier (registered verifiers with a bearer credential)
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
    # Answers signed on demand for a nonce, per client (verifier, or address) and second in each process;
    # beyond it (and its burst of twice as many) the nonce is not honoured and the cached answer is
    # sent instead (RFC 8954 section 2.1 lets a responder leave the nonce out), so nobody can keep the
    # token busy signing.
    nonce_signatures_per_client: int = 20


class RevocationConfig(_Section):
    """Window revocations, the resident-register feed and the online window."""

    feed_max_body_bytes: int = 64 * 1024 * 1024  # a batch of 100,000 events is about 15 MB of JSON
    feed_max_events: int = 200_000
    feed_chunk_events: int = 25_000  # events applied per transaction
    online_max_body_bytes: int = 16384  # an application (certificate + signature + JSON) is about 3 KB
    online_max_in_flight: int = 32  # online requests handled at once by a process; more answer busy
    online_retry_after: int = 5  # seconds, Retry-After of a busy answer
    online_max_skew_seconds: int = 600  # issued_at further than this from now is stale
    nonce_retention_days: int = 7


class CRLConfig(_Section):
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


class Config(_Section):
    database_url: str | None = None
    # The role that owns the schema and applies migrations (DATABASE_OWNER_URL). When set, the service
    # (database_url) runs as a role granted only what it needs: no UPDATE, DELETE or TRUNCATE of the audit
    # trail. Unset: migrations run as the service's own role.
    database_owner_url: str | None = None
    var_dir: str = "var"
    hsm: HSMConfig = Field(default_factory=HSMConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    issuance: IssuanceConfig = Field(default_factory=IssuanceConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    crl: CRLConfig = Field(default_factory=CRLConfig)
    revocation: RevocationConfig = Field(default_factory=RevocationConfig)
    ca: CAs = Field(default_factory=CAs)
    ocsp: OCSPConfig = Field(default_factory=OCSPConfig)

    @property
    def embedded(self) -> bool:
        """No DATABASE_URL: run the embedded PostgreSQL cluster and SoftHSM token under var/."""
        return self.database_url is None


_M = typing.TypeVar("_M", bound=_Section)


def _validate(cls: type[_M], data: typing.Any, where: str) -> _M:
    """``cls.model_validate(data)``, a ValidationError turned into a ConfigError named after ``where``."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        message, field = _describe(exc, where)
        raise ConfigError(message, field=field) from None


def _dotted(where: str, loc: tuple) -> str:
    return where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _describe(exc: ValidationError, where: str) -> tuple[str, str]:
    """The message of the first error, as "where.key.path: problem", and that path. Unknown keys come
    first: a misspelt key also makes the key it was meant to be look missing."""
    errors = exc.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        parent = loc[:-1]
        unknown = sorted({str(e["loc"][-1]) for e in errors
                          if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parent})
        path = _dotted(where, parent)
        return f"{path}: unknown key(s) {', '.join(unknown)}", path
    path = _dotted(where, loc)
    kind, msg, value = first["type"], first["msg"], first.get("input")
    if kind == "model_type":
        msg = f"expected a table, got {type(value).__name__}"
    elif kind == "literal_error":
        msg = f"{msg}, got {value!r}"
    elif kind.endswith("_type"):
        msg = f"{msg}, got {type(value).__name__}"
    return f"{path}: {msg}", path


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
    if not 1 <= cfg.issuance.batch_max_requests <= 1000 or cfg.issuance.batch_max_body_bytes < 65536:
        raise ConfigError("issuance.batch_max_requests must be 1..1000 and issuance.batch_max_body_bytes "
                          "at least 65536")
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
    srv = cfg.server
    if not srv.private_tls and not srv.trusted_proxies:
        raise ConfigError("server.private_tls = false needs server.trusted_proxies: the addresses of the "
                          "TLS-terminating proxies whose X-Client-Certificate-Serial is believed")
    if (srv.host, srv.port) == (srv.private_host, srv.private_port) and srv.port != 0:
        raise ConfigError("server.private_port: the private listener needs an address of its own")
    if not 1 <= srv.client_certificate_days <= 3650:
        raise ConfigError("server.client_certificate_days must be 1..3650")
    return cfg


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _from_env(section: _M, var: str, **changes: typing.Any) -> _M:
    """``section.replace(**changes)`` for environment variable ``var``; a bad value names the variable."""
    try:
        return section.replace(**changes)
    except ConfigError as exc:
        raise ConfigError(f"{var}: {exc.message}", field=var) from None


def load(path: str | os.PathLike | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Load configuration: defaults, then the TOML file (SHOMEI_CONFIG), then environment overrides.

    Environment: DATABASE_URL, DATABASE_OWNER_URL, SHOMEI_PKCS11_MODULE, SHOMEI_PKCS11_TOKEN, SHOMEI_PKCS11_PIN_FILE,
    SHOMEI_LISTEN (host:port), SHOMEI_PRIVATE_LISTEN (host:port), SHOMEI_PUBLIC_URL, SHOMEI_VAR_DIR, SHOMEI_WORKERS, SHOMEI_RESIDENT_KEY_FILE.
    Raises ConfigError (never a pydantic ValidationError) naming the key or variable at fault.
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
    cfg = _validate(Config, data, "config")

    if "DATABASE_URL" in env:
        cfg = _from_env(cfg, "DATABASE_URL", database_url=env["DATABASE_URL"] or None)
    if "DATABASE_OWNER_URL" in env:
        cfg = _from_env(cfg, "DATABASE_OWNER_URL", database_owner_url=env["DATABASE_OWNER_URL"] or None)
    if "SHOMEI_VAR_DIR" in env:
        cfg = _from_env(cfg, "SHOMEI_VAR_DIR", var_dir=env["SHOMEI_VAR_DIR"])

    hsm = cfg.hsm
    for var, key in (("SHOMEI_PKCS11_MODULE", "module"), ("SHOMEI_PKCS11_TOKEN", "token_label"),
                     ("SHOMEI_PKCS11_PIN_FILE", "pin_file")):
        if var in env:
            hsm = _from_env(hsm, var, **{key: env[var]})

    server = cfg.server
    if "SHOMEI_LISTEN" in env:
        listen = env["SHOMEI_LISTEN"]
        host, _, port = listen.rpartition(":")
        if not host or not _digits(port):
            raise ConfigError(f"SHOMEI_LISTEN must be host:port, got {listen!r}", field="SHOMEI_LISTEN")
        server = _from_env(server, "SHOMEI_LISTEN", host=host, port=int(port))
    if "SHOMEI_PRIVATE_LISTEN" in env:
        listen = env["SHOMEI_PRIVATE_LISTEN"]
        host, _, port = listen.rpartition(":")
        if not host or not _digits(port):
            raise ConfigError(f"SHOMEI_PRIVATE_LISTEN must be host:port, got {listen!r}",
                              field="SHOMEI_PRIVATE_LISTEN")
        server = _from_env(server, "SHOMEI_PRIVATE_LISTEN", private_host=host, private_port=int(port))
    if "SHOMEI_PUBLIC_URL" in env:
        server = _from_env(server, "SHOMEI_PUBLIC_URL", public_base_url=env["SHOMEI_PUBLIC_URL"].rstrip("/"))
    if "SHOMEI_WORKERS" in env:
        workers = env["SHOMEI_WORKERS"].strip()
        if not _digits(workers) or int(workers) < 1:
            raise ConfigError(f"SHOMEI_WORKERS must be a positive whole number, got {env['SHOMEI_WORKERS']!r}",
                              field="SHOMEI_WORKERS")
        server = _from_env(server, "SHOMEI_WORKERS", workers=int(workers))

    security = cfg.security
    if "SHOMEI_RESIDENT_KEY_FILE" in env:
        security = _from_env(security, "SHOMEI_RESIDENT_KEY_FILE",
                             resident_hash_key_file=env["SHOMEI_RESIDENT_KEY_FILE"])

    return validate(cfg.replace(hsm=hsm, server=server, security=security))
