"""Credentials of the private listener: the operations CA (its key in the token, apart from the resident
CAs), the listener's server certificate, and the client certificates of terminals, the call centre and
the feed. A client is authorised by the serial of its certificate, looked up in the database, so that
disabling or rotating takes effect on every process within a second."""
from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ca_core.ca import Issuer
from ca_core.config import Config
from ca_core.csr import check_csr
from ca_core.errors import Conflict, NotFound
from ca_core.names import build_name
from ca_core.profiles import assemble_certificate, tls_tbs
from ca_core.serials import new_serial, serial_bytes, serial_hex
from hsm.ceremony import create_self_signed
from plumbing.cli import command_user
from plumbing.runtime import Runtime
from shomei.embedded import write_secret
from storage import audit
from storage import clients as client_store
from storage import operations_ca as ops_store
from storage import operators as operator_store
from storage.clients import Client

log = logging.getLogger(__name__)

OPERATIONS_CA_SUBJECT = (("O", "shomei"), ("OU", "operations"), ("CN", "shomei operations CA"))
OPERATIONS_CA_DAYS = 3650
SERVER_RENEW_DAYS = 30  # a server certificate shomei made is made anew this close to its end
CERT_KINDS = ("terminal", "national", "feed", "operations")  # clients with certificates; verifiers have bearer credentials


@dataclass(frozen=True)
class TLSFiles:
    """Where the private listener finds its certificate, key and the CA of client certificates."""
    cert: Path
    key: Path
    client_ca: Path


def tls_files(cfg: Config) -> TLSFiles:
    tls = Path(cfg.var_dir) / "tls"
    srv = cfg.server
    return TLSFiles(Path(srv.tls_cert_file or tls / "server.crt"), Path(srv.tls_key_file or tls / "server.key"),
                    Path(srv.client_ca_file or tls / "operations-ca.pem"))


def pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


async def ensure_operations_ca(rt: Runtime) -> Issuer:
    """The operations CA, made on first use (key pair in the token, self-signed certificate)."""
    async with rt.pool.acquire() as conn:
        issuer = await ops_store.current(conn)
        if issuer is not None:
            return issuer
        async with conn.transaction():
            await ops_store.lock(conn)
            issuer = await ops_store.current(conn)
            if issuer is not None:
                return issuer
            key_type = rt.cfg.ca.signing.key_type
            made = await create_self_signed(rt.signer, "shomei-operations-ca-g1", OPERATIONS_CA_SUBJECT,
                                            key_type, OPERATIONS_CA_DAYS, rt.clock.now())
            issuer = await ops_store.insert(conn, generation=1, key_label=made.key_label, key_type=key_type,
                                            certificate=made.certificate_der, not_after=made.not_after)
            await audit.record(conn, action="operations_ca_created", operator_id=command_user(),
                               details={"key_label": made.key_label, "fingerprint_sha256": issuer.fingerprint_sha256})
    log.info("created the operations CA (%s)", issuer.fingerprint_sha256)
    return issuer


async def _sign(rt: Runtime, ops: Issuer, *, subject: x509.Name, spki_der: bytes, server: bool, days: int,
                dns_names=(), ip_addresses=()) -> tuple[bytes, int, dt.datetime, dt.datetime]:
    now = rt.clock.now()
    not_before = now - dt.timedelta(minutes=5)  # tolerate a little clock skew of the peer
    not_after = min(now + dt.timedelta(days=days), ops.not_after)
    serial = new_serial()
    tbs = tls_tbs(ops, subject=subject, spki_der=spki_der, serial=serial, not_before=not_before,
                  not_after=not_after, server=server, dns_names=tuple(dns_names),
                  ip_addresses=tuple(ip_addresses)).dump()
    signature = await rt.signer.sign(ops.key_label, ops.algorithm, tbs)
    return assemble_certificate(tbs, ops.algorithm, signature), serial, not_before, not_after


def _new_key() -> tuple[rsa.RSAPrivateKey, bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key, spki, key_pem


@dataclass(frozen=True)
class IssuedCredential:
    client: Client
    certificate_pem: bytes
    key_pem: bytes | None  # None when the client sent a CSR (its key never left it)
    serial: int
    not_after: dt.datetime
    retired: int  # earlier certificates of the client that stopped working (rotation)


def client_subject(client: Client) -> x509.Name:
    """O=shomei, OU=<kind>, [L=<municipality code>], CN=<name>: who the client is, for people reading
    logs and certificates (authorisation looks the serial up, never the subject)."""
    pairs = [("O", "shomei"), ("OU", client.kind)]
    if client.municipality_code:
        pairs.append(("L", client.municipality_code))
    return build_name(pairs + [("CN", client.name)])


async def issue_client_certificate(rt: Runtime, client: Client, *, csr_pem: str | None = None,
                                   rotate: bool = False) -> IssuedCredential:
    """A certificate for ``client`` from the operations CA: for the key of ``csr_pem`` (proof of possession
    checked), else for a new key pair returned with it. ``rotate``: its earlier certificates stop working."""
    if client.kind not in CERT_KINDS:
        raise Conflict(f"a {client.kind} client has a bearer credential, not a certificate", code="wrong_client_kind")
    ops = await ensure_operations_ca(rt)
    key_pem = None
    if csr_pem is not None:
        spki = check_csr(csr_pem, field="csr", rsa_key_sizes=(2048, 3072, 4096)).spki_der
    else:
        _key, spki, key_pem = _new_key()
    cert_der, serial, not_before, not_after = await _sign(
        rt, ops, subject=client_subject(client), spki_der=spki, server=False,
        days=rt.cfg.server.client_certificate_days)
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            retired = await client_store.add_certificate(
                conn, client_id=client.id, serial=serial_bytes(serial), operations_ca_id=ops.db_id,
                not_before=not_before, not_after=not_after, retire_others=rotate)
            await audit.record(conn, action="client_certificate_rotated" if rotate else "client_certificate_issued",
                               client_id=client.id, operator_id=command_user(), serial=serial_bytes(serial),
                               details={"name": client.name, "kind": client.kind, "retired": retired,
                                        "not_after": not_after.isoformat()})
    return IssuedCredential(client, pem(cert_der), key_pem, serial, not_after, retired)


async def add_client(rt: Runtime, *, kind: str, name: str, municipality_code: str | None,
                     csr_pem: str | None = None) -> IssuedCredential:
    """Register a terminal, call-centre or feed client and issue its certificate."""
    async with rt.pool.acquire() as conn:
        if await client_store.find_by_name(conn, name):
            raise Conflict(f"a client named {name!r} exists", code="client_exists")
        async with conn.transaction():
            client = await client_store.register(conn, kind=kind, name=name, municipality_code=municipality_code)
            await audit.record(conn, action="client_added", client_id=client.id, operator_id=command_user(),
                               details={"name": name, "kind": kind, "municipality_code": municipality_code})
    return await issue_client_certificate(rt, client, csr_pem=csr_pem)


async def client_named(rt: Runtime, name: str) -> Client:
    async with rt.pool.acquire() as conn:
        client = await client_store.find_by_name(conn, name)
    if client is None:
        raise NotFound(f"no client named {name!r}", code="unknown_client")
    return client


async def disable_client(rt: Runtime, name: str) -> bool:
    client = await client_named(rt, name)
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            done = await client_store.disable(conn, client.id)
            if done:
                await audit.record(conn, action="client_disabled", client_id=client.id, operator_id=command_user(),
                                   details={"name": name})
    return done


async def set_operator(rt: Runtime, scope: str, operator: str, *, enabled: bool) -> bool | None:
    """Register/enable or disable an operator of ``scope`` (a municipality code or 'national')."""
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            if enabled:
                done = await operator_store.add(conn, scope, operator)
            else:
                done = await operator_store.disable(conn, scope, operator)
            if done:
                await audit.record(conn, action="operator_added" if enabled else "operator_disabled",
                                   operator_id=command_user(), details={"scope": scope, "operator": operator})
    return done


async def ensure_tls_files(rt: Runtime) -> TLSFiles:
    """The private listener's files. Those configured are the operator's and used as they are; the
    defaults under var/tls are made here: the operations CA certificate (clients' trust anchor too) and a
    server certificate for server.tls_server_names, renewed when it nears its end or its names change."""
    cfg = rt.cfg
    files = tls_files(cfg)
    srv = cfg.server
    ops = await ensure_operations_ca(rt)
    if not srv.client_ca_file:
        files.client_ca.parent.mkdir(parents=True, exist_ok=True)
        files.client_ca.write_bytes(pem(ops.certificate_der))
    if srv.tls_cert_file or srv.tls_key_file:
        return files
    names = tuple(srv.tls_server_names)
    if files.cert.exists() and files.key.exists() and not _needs_new_server_cert(files.cert, names, ops, rt.clock.now()):
        return files
    ips = [n for n in names if _is_ip(n)]
    dns = [n for n in names if not _is_ip(n)]
    _key, spki, key_pem = _new_key()
    cert_der, serial, _nb, not_after = await _sign(
        rt, ops, subject=build_name([("O", "shomei"), ("OU", "private listener"), ("CN", names[0] if names else "shomei")]),
        spki_der=spki, server=True, days=397, dns_names=dns, ip_addresses=ips)
    write_secret(files.key, key_pem)
    files.cert.write_bytes(pem(cert_der) + pem(ops.certificate_der))
    log.info("made the private listener's certificate %s for %s (until %s)", serial_hex(serial), ", ".join(names),
             f"{not_after:%Y-%m-%d}")
    return files


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _needs_new_server_cert(path: Path, names: tuple[str, ...], ops: Issuer, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound, OSError):
        return True
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    issued_by_ops = cert.issuer.public_bytes() == ops.name_der
    return (have != set(names) or not issued_by_ops
            or cert.not_valid_after_utc - now < dt.timedelta(days=SERVER_RENEW_DAYS))


async def ensure_demo_client(rt: Runtime, *, kind: str, name: str, folder: Path,
                             municipality_code: str | None = None, operator: str | None = None) -> Path:
    """The embedded default's demo client: registered once, its certificate and key kept in
    ``folder``/<name>.crt and .key (0600), and its demo operator registered. Returns the certificate path."""
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    async with rt.pool.acquire() as conn:
        client = await client_store.find_by_name(conn, name)
    if client is None:
        issued = await add_client(rt, kind=kind, name=name, municipality_code=municipality_code)
    elif cert_path.exists() and key_path.exists() and not _expiring(cert_path, rt.clock.now()):
        issued = None
    else:
        issued = await issue_client_certificate(rt, client, rotate=True)
    if issued is not None:
        write_secret(key_path, issued.key_pem)
        cert_path.write_bytes(issued.certificate_pem)
    if operator:
        await set_operator(rt, municipality_code or operator_store.NATIONAL, operator, enabled=True)
    return cert_path


def _expiring(path: Path, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (ValueError, OSError):
        return True
    return cert.not_valid_after_utc - now < dt.timedelta(days=SERVER_RENEW_DAYS)
