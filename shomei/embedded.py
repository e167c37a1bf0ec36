"""The embedded default: a PostgreSQL cluster and a SoftHSMv2 token under var/, made on first start.

Secrets (database password, token PINs, resident-hash key) are generated on first start and kept in
files readable only by their owner. A second start reuses everything.
"""
from __future__ import annotations

import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ca_core.config import Config
from ca_core.errors import ConfigError

log = logging.getLogger(__name__)

SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                   "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so")


def write_secret(path: Path, value: str | bytes) -> None:
    """Create a file readable only by its owner (0600) holding a secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value.encode() if isinstance(value, str) else value)
    os.chmod(path, 0o600)


def read_or_create_secret(path: Path, nbytes: int = 24) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(nbytes)
    write_secret(path, value)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if found:
        return found[0]
    path = shutil.which(name)
    if not path:
        raise ConfigError(f"PostgreSQL's {name} was not found; install the postgresql package")
    return path


class EmbeddedPostgres:
    """A private PostgreSQL cluster in ``root`` listening on 127.0.0.1:``port`` with password auth.

    Two roles: ``shomei`` (the cluster's superuser, password in ``password``) owns the schema and
    applies migrations (``owner_url``); ``shomei_app`` (password in ``app-password``) is what the
    service connects as (``url``), granted its privileges by the migrations (storage.db.migrate).
    ``service_can_create_databases`` lets ``shomei_app`` create databases of its own (the scratch
    databases of tests and benchmarks); the embedded default of ``make run`` turns it off.

    PostgreSQL refuses to run as root, so when we are root the server runs as the ``postgres`` user.
    """

    def __init__(self, root: Path, port: int, *, service_can_create_databases: bool = True):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.port = port
        self.password_file = self.root / "password"
        self.user = "shomei"
        self.app_password_file = self.root / "app-password"
        self.app_user = "shomei_app"
        self.service_can_create_databases = service_can_create_databases
        self.started_here = False  # True when ensure_started started the server (so we stop it)
        self._run_as = None
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise ConfigError("running as root needs the 'postgres' system user (postgresql package)") from None

    @property
    def url(self) -> str:
        """What the service connects with (DATABASE_URL): the service role."""
        password = self.app_password_file.read_text().strip()
        return f"postgresql://{self.app_user}:{password}@127.0.0.1:{self.port}/shomei"

    @property
    def owner_url(self) -> str:
        """What migrations run with (DATABASE_OWNER_URL): the owner of the schema."""
        password = self.password_file.read_text().strip()
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/shomei"

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = list(args)
        if self._run_as:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        return subprocess.run(argv, check=check, capture_output=True, text=True)

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            # The server user must be able to reach its data directory through our folders.
            for parent in [self.root, *self.root.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
            os.chown(self.root, self._run_as.pw_uid, self._run_as.pw_gid)

    def ensure_started(self) -> str:
        """initdb on first use, start the server if it is not running, create the database; returns the URL."""
        self._prepare_dirs()
        password = read_or_create_secret(self.password_file)
        if not (self.data / "PG_VERSION").exists():
            pwfile = self.root / "initdb.pw"
            write_secret(pwfile, password)
            if self._run_as:
                os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
            try:
                res = self._cmd(_pg_bin("initdb"), "-D", str(self.data), "-U", self.user, "-E", "UTF8",
                                "--no-locale", "--auth=scram-sha-256", f"--pwfile={pwfile}", check=False)
            finally:
                pwfile.unlink(missing_ok=True)
            if res.returncode:
                raise ConfigError(f"initdb failed: {res.stderr.strip()[-500:]}")
            with open(self.data / "postgresql.auto.conf", "a") as f:
                f.write("listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                        "max_connections = 300\nshared_buffers = '512MB'\nwork_mem = '16MB'\n"
                        "max_wal_size = '4GB'\ncheckpoint_timeout = '15min'\nwal_compression = lz4\n")
        if not self.running():
            res = self._cmd(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                            "-o", f"-p {self.port}", "-w", "-t", "60", "start", check=False)
            self.started_here = res.returncode == 0
            if res.returncode:
                tail = ""
                log_file = self.root / "server.log"
                if log_file.exists():
                    tail = log_file.read_text(errors="replace")[-800:]
                raise ConfigError(f"PostgreSQL did not start on port {self.port}: {res.stderr.strip()} {tail}")
        self._create_database()
        return self.url

    def running(self) -> bool:
        return self._cmd(_pg_bin("pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def _create_database(self) -> None:
        env = dict(os.environ, PGPASSWORD=self.password_file.read_text().strip())
        base = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres", "-tAc"]
        for _ in range(50):
            res = subprocess.run(base + ["SELECT 1 FROM pg_database WHERE datname = 'shomei'"],
                                 capture_output=True, text=True, env=env)
            if res.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise ConfigError(f"cannot reach the embedded PostgreSQL: {res.stderr.strip()}")
        if res.stdout.strip() != "1":
            subprocess.run(base + ["CREATE DATABASE shomei"], check=True, capture_output=True, env=env)
        self._ensure_service_role(env)

    def _ensure_service_role(self, env: dict) -> None:
        """The service role, with its password file (made on first start). The SQL, password included,
        goes to psql's standard input, never on a command line."""
        password = read_or_create_secret(self.app_password_file)
        createdb = "CREATEDB" if self.service_can_create_databases else "NOCREATEDB"
        script = (f"SELECT 'CREATE ROLE {self.app_user}' WHERE NOT EXISTS"
                  f" (SELECT 1 FROM pg_roles WHERE rolname = '{self.app_user}') \\gexec\n"
                  f"ALTER ROLE {self.app_user} WITH LOGIN NOSUPERUSER NOCREATEROLE {createdb}"
                  f" PASSWORD '{password}';\n")
        res = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                              "-U", self.user, "-d", "postgres"], input=script, capture_output=True, text=True, check=False,
                             env=env)
        if res.returncode:
            raise ConfigError(f"cannot create the service role {self.app_user}: {res.stderr.strip()[-300:]}")

    def stop(self) -> None:
        if self.data.exists() and self.running():
            self._cmd(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)


@dataclass(frozen=True)
class TokenInfo:
    module: str
    label: str
    pin_file: str
    conf: str


def softhsm_module() -> str:
    for path in SOFTHSM_MODULES:
        if os.path.exists(path):
            return path
    raise ConfigError("SoftHSMv2 (libsofthsm2.so) was not found; install the softhsm2 package")


class EmbeddedToken:
    """A SoftHSMv2 token with its own softhsm2.conf in ``root``; PINs generated on first start."""

    def __init__(self, root: Path, label: str = "shomei"):
        self.root = Path(root).resolve()
        self.label = label
        self.conf = self.root / "softhsm2.conf"
        self.user_pin_file = self.root / "user.pin"
        self.so_pin_file = self.root / "so.pin"

    def ensure(self) -> TokenInfo:
        """Create the token on first use; sets SOFTHSM2_CONF for this process and its children."""
        tokens = self.root / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if not self.conf.exists():
            self.conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                                 "log.level = ERROR\nslots.removable = false\n")
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        module = softhsm_module()
        if not any(tokens.iterdir()):
            user_pin = read_or_create_secret(self.user_pin_file, 12)
            so_pin = read_or_create_secret(self.so_pin_file, 12)
            _init_token(self.label, so_pin, user_pin)
            log.info("initialised SoftHSM token %r", self.label)
        return TokenInfo(module=module, label=self.label, pin_file=str(self.user_pin_file), conf=str(self.conf))


def _init_token(label: str, so_pin: str, user_pin: str, timeout: float = 60) -> None:
    """softhsm2-util --init-token with the PINs typed at its prompts on a pseudo-terminal, never on its
    command line (where `ps` would show them to every user of the host)."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: softhsm2-util, its terminal our pty
        try:
            os.execvp("softhsm2-util", ["softhsm2-util", "--init-token", "--free", "--label", label])
        finally:
            os._exit(127)
    answers = [so_pin, so_pin, user_pin, user_pin]
    seen, output, deadline = 0, b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed its terminal: done
                break
            if not chunk:
                break
            output += chunk
            while seen < len(answers) and output.count(b"PIN:") > seen:  # one answer per prompt
                os.write(fd, answers[seen].encode() + b"\n")
                seen += 1
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = output.decode(errors="replace").replace(so_pin, "***").replace(user_pin, "***")[-300:]
        raise ConfigError(f"cannot initialise the SoftHSM token: {tail.strip()}")


EMBEDDED_PG_PORT = int(os.environ.get("SHOMEI_PG_PORT", "55432"))


def prepare_embedded(cfg: Config) -> tuple[Config, bool]:
    """Start (or reuse) the embedded PostgreSQL and SoftHSM token under var/; returns the filled-in config
    and whether this call started PostgreSQL (then the caller stops it with stop_embedded)."""
    var = Path(cfg.var_dir).resolve()
    var.mkdir(parents=True, exist_ok=True)
    pg = EmbeddedPostgres(var / "pg", EMBEDDED_PG_PORT, service_can_create_databases=False)
    url = pg.ensure_started()
    token = EmbeddedToken(var / "softhsm").ensure()
    key_file = var / "resident-hash.key"
    if not key_file.exists():
        write_secret(key_file, secrets.token_bytes(32))
    return cfg.replace(
        database_url=url,
        database_owner_url=pg.owner_url,
        hsm=cfg.hsm.replace(module=token.module, token_label=token.label, pin_file=token.pin_file),
        security=cfg.security.replace(resident_hash_key_file=str(key_file)),
    ), pg.started_here


def stop_embedded(cfg: Config) -> None:
    EmbeddedPostgres(Path(cfg.var_dir).resolve() / "pg", EMBEDDED_PG_PORT).stop()
