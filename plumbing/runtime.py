"""Runtime assembly: everything a running process holds (configuration, clock, database pool, token
session, CA generations, the client cache), opened once and handed to the services as typed parts.

Where the embedded default is started (no DATABASE_URL) is the shell's business (shomei/embedded.py):
this module only connects to what the configuration names.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import x509 as ax509

from ca_core.ca import IssuerSet
from ca_core.clock import Clock, SystemClock
from ca_core.config import Config
from ca_core.errors import ConfigError
from hsm.pkcs11_signer import PKCS11Signer, StartupError, read_pin
from hsm.signer import Signer
from storage import cas, db
from storage.db import DATABASE_DOWN

from .auth import ClientCache
from .status_channel import StatusChannel

log = logging.getLogger(__name__)


class IssuerDirectory:
    """The CA generations as last read from the database (ca_core.ca.IssuerSource): a rollover by any
    process is picked up by ``reload``."""

    def __init__(self, pool, issuers: IssuerSet | None = None):
        self._pool = pool
        self.issuers = issuers if issuers is not None else IssuerSet([])
        self._missed_at = float("-inf")  # the last reload_on_miss

    async def reload(self) -> IssuerSet:
        async with self._pool.acquire() as conn:
            self.issuers = IssuerSet(await cas.list_generations(conn))
        return self.issuers

    async def reload_on_miss(self, min_interval: float = 1.0) -> bool:
        """A key id or issuer nobody here knows may be a generation another process just made: read the
        generations again, at most once per ``min_interval`` (unknown ids sent by anyone cannot make every
        request a query). True when it read them."""
        if time.monotonic() - self._missed_at < min_interval:
            return False
        self._missed_at = time.monotonic()
        try:
            await self.reload()
        except DATABASE_DOWN:
            return False
        return True


@dataclass
class Runtime:
    """The parts of one process. Services never receive it whole: each is built from the parts it uses."""

    cfg: Config
    clock: Clock
    pool: object  # asyncpg.Pool
    signer: Signer
    directory: IssuerDirectory
    resident_key: bytes
    clients: ClientCache
    status: StatusChannel  # status-change notices of every process; sync() after a change
    worker_index: int | None = None  # the worker's number under `shomei serve`; None in tools and tests

    @property
    def issuers(self) -> IssuerSet:
        return self.directory.issuers

    async def reload_issuers(self) -> IssuerSet:
        return await self.directory.reload()

    async def close(self) -> None:
        await self.pool.close()
        await self.signer.close()


def read_resident_key(cfg: Config) -> bytes:
    """The HMAC key resident codes are hashed with; raises ConfigError."""
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


async def open_runtime(cfg: Config, *, clock: Clock | None = None, migrate: bool = True,
                       worker_index: int | None = None) -> Runtime:
    """Connect to the database and the token (raising a readable error naming what is wrong)."""
    if cfg.database_url is None:
        raise ConfigError("no database configured (DATABASE_URL)")
    if migrate:
        db.migrate(cfg.database_url, owner_url=cfg.database_owner_url)
    pin = read_pin(cfg.hsm.pin_file, cfg.hsm.pin_env)
    signer = PKCS11Signer(cfg.hsm.module, cfg.hsm.token_label, pin)
    try:
        await signer.open()
    except StartupError:
        await signer.close()
        raise
    pool = await db.create_pool(cfg.database_url, max_size=cfg.server.db_pool_size)
    rt = Runtime(cfg=cfg, clock=clock or SystemClock(), pool=pool, signer=signer, directory=IssuerDirectory(pool),
                 resident_key=read_resident_key(cfg), clients=ClientCache(pool),
                 status=StatusChannel(cfg.database_url, pool, sync_timeout=cfg.server.status_sync_ms / 1000),
                 worker_index=worker_index)
    rt.status.watch_clients(rt.clients.clear)  # a disabled credential stops working within the notice's delay
    await rt.reload_issuers()
    return rt


async def check_keys(rt: Runtime) -> None:
    """At start: every current CA's key must be in the token and match its certificate."""
    for issuer in rt.issuers:
        spki = await rt.signer.public_key(issuer.key_label)
        if spki is None:
            raise StartupError(f"the token has no key {issuer.key_label!r} of CA {issuer.ca_id} "
                               f"generation {issuer.generation}")
        cert_spki = ax509.Certificate.load(issuer.certificate_der)["tbs_certificate"]["subject_public_key_info"]
        if spki != cert_spki.dump():
            raise StartupError(f"key {issuer.key_label!r} in the token does not match the CA certificate")
