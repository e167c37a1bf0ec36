"""Everything a running process holds: configuration, clock, database pool, token session, issuers.

`open_runtime` is the single place where the embedded default (PostgreSQL and SoftHSM under var/) is
started when no DATABASE_URL is configured.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ca_core.ca import IssuerSet
from ca_core.clock import Clock, SystemClock
from ca_core.config import Config
from ca_core.errors import ConfigError
from hsm.pkcs11_signer import PKCS11Signer, StartupError, read_pin
from storage import cas, db
from shomei.embedded import EmbeddedPostgres, EmbeddedToken, write_secret
from shomei.http import ClientCache

log = logging.getLogger(__name__)

EMBEDDED_PG_PORT = int(os.environ.get("SHOMEI_PG_PORT", "55432"))


@dataclass
class Runtime:
    cfg: Config
    clock: Clock
    pool: object
    signer: PKCS11Signer
    issuers: IssuerSet
    resident_key: bytes
    clients: ClientCache
    extras: dict = field(default_factory=dict)  # per-component state (caches, services)

    async def reload_issuers(self) -> IssuerSet:
        async with self.pool.acquire() as conn:
            self.issuers = IssuerSet(await cas.list_generations(conn))
        return self.issuers

    async def close(self) -> None:
        await self.pool.close()
        await self.signer.close()


def prepare_embedded(cfg: Config) -> tuple[Config, bool]:
    """Start (or reuse) the embedded PostgreSQL and SoftHSM token under var/; returns the filled-in config
    and whether this call started PostgreSQL (then the caller stops it with stop_embedded)."""
    var = Path(cfg.var_dir).resolve()
    var.mkdir(parents=True, exist_ok=True)
    pg = EmbeddedPostgres(var / "pg", EMBEDDED_PG_PORT)
    url = pg.ensure_started()
    token = EmbeddedToken(var / "softhsm").ensure()
    key_file = var / "resident-hash.key"
    if not key_file.exists():
        write_secret(key_file, secrets.token_bytes(32))
    return cfg.replace(
        database_url=url,
        hsm=dataclasses.replace(cfg.hsm, module=token.module, token_label=token.label, pin_file=token.pin_file),
        security=dataclasses.replace(cfg.security, resident_hash_key_file=str(key_file)),
    ), pg.started_here


def stop_embedded(cfg: Config) -> None:
    EmbeddedPostgres(Path(cfg.var_dir).resolve() / "pg", EMBEDDED_PG_PORT).stop()


def read_resident_key(cfg: Config) -> bytes:
    path = cfg.security.resident_hash_key_file
    if not path:
        raise ConfigError("security.resident_hash_key_file is required (the key of resident-code hashes)")
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the resident-hash key {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise ConfigError(f"the resident-hash key {path} is shorter than 16 bytes")
    return key


async def open_runtime(cfg: Config, *, clock: Clock | None = None, migrate: bool = True) -> Runtime:
    """Connect to the database and the token (raising a readable error naming what is wrong)."""
    if cfg.database_url is None:
        raise ConfigError("no database configured (DATABASE_URL)")
    if migrate:
        db.migrate(cfg.database_url)
    pin = read_pin(cfg.hsm.pin_file, cfg.hsm.pin_env)
    signer = PKCS11Signer(cfg.hsm.module, cfg.hsm.token_label, pin)
    try:
        await signer.open()
    except StartupError:
        await signer.close()
        raise
    pool = await db.create_pool(cfg.database_url, max_size=cfg.server.db_pool_size)
    rt = Runtime(cfg=cfg, clock=clock or SystemClock(), pool=pool, signer=signer, issuers=IssuerSet([]),
                 resident_key=read_resident_key(cfg), clients=ClientCache(pool))
    await rt.reload_issuers()
    return rt


async def check_keys(rt: Runtime) -> None:
    """At start: every current CA's key must be in the token and match its certificate."""
    from asn1crypto import x509 as ax509

    for issuer in rt.issuers:
        spki = await rt.signer.public_key(issuer.key_label)
        if spki is None:
            raise StartupError(f"the token has no key {issuer.key_label!r} of CA {issuer.ca_id} "
                               f"generation {issuer.generation}")
        cert_spki = ax509.Certificate.load(issuer.certificate_der)["tbs_certificate"]["subject_public_key_info"]
        if spki != cert_spki.dump():
            raise StartupError(f"key {issuer.key_label!r} in the token does not match the CA certificate")
