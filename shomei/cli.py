"""`shomei`: the operators' command line."""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import click

from ca_core import config as config_mod
from ca_core.errors import ShomeiError
from ca_core.kinds import KINDS
from plumbing.cli import CommandContext, fail, pass_context

log = logging.getLogger("shomei")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("yoyo").setLevel(logging.WARNING)


def _config(prepare: bool = True, *, stop_at_exit: bool = True):
    """Load configuration; in the embedded default, start PostgreSQL and the token under var/ (and stop
    PostgreSQL again when the command ends, if this command started it)."""
    import atexit

    from shomei.embedded import prepare_embedded, stop_embedded

    from hsm.pkcs11_signer import withdraw_pin

    cfg = config_mod.load()
    withdraw_pin(cfg.hsm.pin_env)  # no child process (workers, pg_ctl, psql) inherits a PIN
    if cfg.embedded and prepare:
        cfg, started = prepare_embedded(cfg)
        if started and stop_at_exit:
            atexit.register(stop_embedded, cfg)
    return cfg


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """shomei: certificate-authority back end for a national individual PKI."""
    _setup_logging(verbose)
    ctx.obj = CommandContext(load_config=_config)


# -- key ceremony and CAs ------------------------------------------------------------------------

@main.command()
@pass_context
def ceremony(ctx: CommandContext) -> None:
    """Create the CA keys, self-signed CA certificates and OCSP responder certificates that are
    missing (idempotent: a second run changes nothing)."""
    from shomei.operations import run_ceremony

    done = ctx.run(run_ceremony)
    for line in done or ["nothing to do: every CA has its key, certificate and responder"]:
        click.echo(line)


@main.group()
def ca() -> None:
    """CA generations."""


def _colon_hex(hexstr: str) -> str:
    return ":".join(hexstr[i:i + 2] for i in range(0, len(hexstr), 2)).upper()


@ca.command("list")
@pass_context
def ca_list(ctx: CommandContext) -> None:
    """Each CA generation with its SHA-256 fingerprint, as residents are told to compare."""
    async def _list(rt):
        from shomei.operations import generation_plans
        from storage import cas

        async with rt.pool.acquire() as conn:
            links = await cas.list_links(conn)
            retired = await cas.retired_at(conn)
        plans = {(p.ca_id, p.generation): p for p in await generation_plans(rt)}
        return (list(rt.issuers), {i.ca_id: rt.issuers.current(i.ca_id) for i in rt.issuers}, links, plans,
                rt.clock.now(), retired)

    issuers, current, links, plans, now, retired = ctx.run(_list)
    if not issuers:
        click.echo("no CA yet: run `shomei ceremony`")
    for i in issuers:
        mark = "current" if current.get(i.ca_id) is i else ("retired" if i.db_id in retired else "previous")
        click.echo(f"{i.ca_id:8} g{i.generation} {mark:8} key id {i.key_id.hex()}  not after "
                   f"{i.not_after:%Y-%m-%d}\n  SHA-256 {_colon_hex(i.fingerprint_sha256)}\n"
                   f"  {i.name.human_friendly}")
        p = plans.get((i.ca_id, i.generation))
        if p is not None:
            responder = f"; OCSP responder until {p.responder_not_after:%Y-%m-%d}" if p.responder_not_after else ""
            due = (f"rollover due {p.rollover_due:%Y-%m-%d} ({(p.rollover_due - now).days} days)" if p.current
                   else f"retired {retired[i.db_id]:%Y-%m-%d}: final CRLs published" if i.db_id in retired
                   else "replaced: publishes CRLs until its last certificate has expired")
            click.echo(f"  {due}{responder}")
            if (warning := p.warning(now)) is not None:
                click.echo(f"  WARNING: {warning}")
        for link in links:
            if (link.ca_id, link.new_generation) == (i.ca_id, i.generation):
                click.echo(f"  link {link.direction.replace('_', '-')} (g{link.old_generation} <-> g{i.generation}): "
                           f"/ca/{i.ca_id}/g{i.generation}/{link.direction.replace('_', '-')}.crt")


@ca.command("rollover")
@click.option("--ca", "ca_id", type=click.Choice(KINDS), required=True)
@click.option("--plan", "plan_only", is_flag=True, help="Print what would be made and when; write nothing.")
@pass_context
def ca_rollover(ctx: CommandContext, ca_id: str, plan_only: bool) -> None:
    """Make a new key generation of a CA current (same name, new key), with its link certificates."""
    from shomei.operations import generation_plans, rollover, rollover_plan

    if plan_only:
        async def _plan(rt):
            return rollover_plan(await generation_plans(rt), ca_id, rt.cfg, rt.clock.now())

        for line in ctx.run(_plan):
            click.echo(line)
        return
    click.echo(ctx.run(lambda rt: rollover(rt, ca_id)))


# -- clients and operators -------------------------------------------------------------------------

@main.group()
def client() -> None:
    """API clients: municipal terminals, the call centre, the resident-register feed (certificates of
    the operations CA, for the private listener) and OCSP verifiers (bearer credentials)."""


def _write_credential(issued, out: Path, csr_given: bool) -> list[str]:
    """Write <name>.crt (and <name>.key, owner-only, when shomei made the key) into ``out``."""
    from shomei.embedded import write_secret

    out.mkdir(parents=True, exist_ok=True)
    name = issued.client.name
    cert = out / f"{name}.crt"
    cert.write_bytes(issued.certificate_pem)
    lines = [f"certificate {cert} (serial {issued.serial:032x}, valid until {issued.not_after:%Y-%m-%d})"]
    if not csr_given:
        key = out / f"{name}.key"
        write_secret(key, issued.key_pem)
        lines.append(f"private key {key} (readable by its owner only: hand it to the client and delete it here)")
    return lines


def _read_csr(csr: Path | None) -> str | None:
    if csr is None:
        return None
    try:
        return csr.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read the CSR {csr}: {exc}") from None


@client.command("add")
@click.option("--kind", type=click.Choice(["terminal", "national", "feed", "operations", "verifier"]), required=True,
              help="terminal (a municipality's window), national (the call centre: holds anywhere), feed, "
                   "operations (reads the operators' status page), verifier (an OCSP relying party with a "
                   "bearer credential).")
@click.option("--name", required=True, help="Unique name; the certificate's CN.")
@click.option("--municipality", "municipality_code", help="Municipality code of a terminal.")
@click.option("--csr", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM PKCS#10 request of the client's own key (otherwise a key pair is made and written).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for <name>.crt and <name>.key.")
@pass_context
def client_add(ctx: CommandContext, kind: str, name: str, municipality_code: str | None, csr: Path | None,
               out: Path) -> None:
    """Register a client. Terminals, the call centre and the feed get a certificate of the operations CA
    (for the private listener); a verifier gets a bearer credential, printed once."""
    from ca_core.municipality import validate_code
    from shomei.credentials import add_client
    from storage import clients as client_store

    try:
        if kind == "terminal":
            if not municipality_code:
                raise click.UsageError("a terminal needs --municipality")
            validate_code(municipality_code)
        elif municipality_code:
            raise click.UsageError(f"a {kind} client has no municipality")
    except ShomeiError as exc:
        fail(exc)
    csr_pem = _read_csr(csr)

    async def _add(rt):
        if kind == "verifier":
            async with rt.pool.acquire() as conn:
                if await client_store.find_by_name(conn, name):
                    raise click.ClickException(f"a client named {name!r} exists")
                _c, token = await client_store.register_verifier(conn, name)
            return [token]
        issued = await add_client(rt, kind=kind, name=name, municipality_code=municipality_code, csr_pem=csr_pem)
        return [f"client {name} ({kind}) added"] + _write_credential(issued, out, csr_pem is not None)

    for line in ctx.run(_add):
        click.echo(line)


@client.command("list")
@pass_context
def client_list(ctx: CommandContext) -> None:
    """Every client: kind, municipality, when it was added, its certificate's end, enabled or disabled."""
    from storage import clients as client_store

    async def _list(rt):
        async with rt.pool.acquire() as conn:
            return await client_store.list_all(conn)

    for c in ctx.run(_list):
        state = f"disabled {c.disabled_at:%Y-%m-%d %H:%M}" if c.disabled_at else "enabled"
        until = f"certificate until {c.certificate_not_after:%Y-%m-%d}" if c.certificate_not_after else (
            "bearer credential" if c.kind == "verifier" else "no certificate")
        click.echo(f"{c.name}\t{c.kind}\t{c.municipality_code or '-'}\tadded {c.created_at:%Y-%m-%d}\t{until}\t{state}")


@client.command("disable")
@click.argument("name")
@pass_context
def client_disable(ctx: CommandContext, name: str) -> None:
    """Disable a client: every worker and host refuses its certificate (or credential) within a second."""
    from shomei.credentials import disable_client

    done = ctx.run(lambda rt: disable_client(rt, name))
    click.echo(f"client {name} disabled" if done else f"client {name} was already disabled")


@client.command("rotate")
@click.argument("name")
@click.option("--csr", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM PKCS#10 request of the client's new key (otherwise a key pair is made and written).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@pass_context
def client_rotate(ctx: CommandContext, name: str, csr: Path | None, out: Path) -> None:
    """Give a client a new certificate (or a verifier a new credential); the old one stops working at once."""
    from shomei.credentials import client_named, issue_client_certificate
    from storage import clients as client_store

    csr_pem = _read_csr(csr)

    async def _rotate(rt):
        found = await client_named(rt, name)
        if found.kind == "verifier":
            async with rt.pool.acquire() as conn:
                return [await client_store.rotate_token(conn, found.id)]
        issued = await issue_client_certificate(rt, found, csr_pem=csr_pem, rotate=True)
        return [f"client {name}: {issued.retired} earlier certificate(s) retired"] + _write_credential(
            issued, out, csr_pem is not None)

    for line in ctx.run(_rotate):
        click.echo(line)


@main.group()
def operator() -> None:
    """Registered operators (clerks): a terminal's request names one of its municipality's."""


def _operator_scope(municipality_code: str | None, national: bool) -> str:
    from ca_core.municipality import validate_code
    from storage.operators import NATIONAL

    if national == bool(municipality_code):
        raise click.UsageError("give exactly one of --municipality CODE and --national")
    if national:
        return NATIONAL
    try:
        validate_code(municipality_code)
    except ShomeiError as exc:
        fail(exc)
    return municipality_code


_SCOPE_OPTIONS = [
    click.option("--municipality", "municipality_code", help="The municipality whose clerk this is."),
    click.option("--national", is_flag=True, help="A clerk of the call centre (national clients)."),
    click.option("--id", "operator_id", required=True, help="The operator id terminals send in X-Operator-Id."),
]


def _scope_options(fn):
    for option in reversed(_SCOPE_OPTIONS):
        fn = option(fn)
    return fn


@operator.command("add")
@_scope_options
@pass_context
def operator_add(ctx: CommandContext, municipality_code: str | None, national: bool, operator_id: str) -> None:
    """Register an operator (or enable a disabled one again)."""
    from plumbing.auth import valid_operator_id
    from shomei.credentials import set_operator

    scope = _operator_scope(municipality_code, national)
    if not valid_operator_id(operator_id):
        raise click.UsageError("--id must be 1-64 characters of A-Z a-z 0-9 . _ @ -")
    done = ctx.run(lambda rt: set_operator(rt, scope, operator_id, enabled=True))
    click.echo(f"operator {operator_id} of {scope} {'registered' if done else 'was registered already'}")


@operator.command("disable")
@_scope_options
@pass_context
def operator_disable(ctx: CommandContext, municipality_code: str | None, national: bool, operator_id: str) -> None:
    """Disable an operator: requests naming it are refused (403) within a second on every process."""
    from shomei.credentials import set_operator

    scope = _operator_scope(municipality_code, national)
    done = ctx.run(lambda rt: set_operator(rt, scope, operator_id, enabled=False))
    if done is None:
        raise click.ClickException(f"no operator {operator_id!r} of {scope}")
    click.echo(f"operator {operator_id} of {scope} {'disabled' if done else 'was disabled already'}")


@operator.command("list")
@click.option("--municipality", "municipality_code", help="Only the operators of this scope.")
@pass_context
def operator_list(ctx: CommandContext, municipality_code: str | None) -> None:
    """Registered operators, enabled or disabled."""
    from storage import operators as operator_store

    async def _list(rt):
        async with rt.pool.acquire() as conn:
            return await operator_store.list_all(conn, municipality_code)

    for o in ctx.run(_list):
        state = f"disabled {o.disabled_at:%Y-%m-%d %H:%M}" if o.disabled_at else "enabled"
        click.echo(f"{o.scope}\t{o.operator_id}\tadded {o.created_at:%Y-%m-%d}\t{state}")


@main.group()
def municipality() -> None:
    """Municipality names (romaji) used in signing certificate subjects."""


@municipality.command("add")
@click.argument("code")
@click.argument("name_romaji")
@pass_context
def municipality_add(ctx: CommandContext, code: str, name_romaji: str) -> None:
    """Register or rename a municipality: CODE (6 digits with check digit) and its romaji name."""
    from ca_core.municipality import validate_code
    from storage import municipalities

    try:
        validate_code(code)
    except ShomeiError as exc:
        fail(exc)

    async def _add(rt):
        from plumbing.cli import command_user
        from storage import audit

        async with rt.pool.acquire() as conn, conn.transaction():
            await municipalities.upsert(conn, code, name_romaji)
            await audit.record(conn, action="municipality_set", operator_id=command_user(),
                               details={"code": code, "name_romaji": name_romaji})
        return f"municipality {code} = {name_romaji}"

    click.echo(ctx.run(_add))


# -- audit trail ---------------------------------------------------------------------------------

@main.group()
def audit() -> None:
    """The audit trail: a hash chain kept by the database, checkpoints signed by the token's audit key."""


@audit.command("verify")
@pass_context
def audit_verify(ctx: CommandContext) -> None:
    """Recompute the whole audit chain and check every signed checkpoint with the token's audit key.
    Exit status 0 when intact; 1 naming the first problem (record changed, deleted or inserted, head
    or checkpoint wrong)."""
    from ca_core.audit import Problem
    from shomei.audit import verify

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="verifying the audit chain", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        result = ctx.run(lambda rt: verify(rt, progress))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if isinstance(result, Problem):
        click.echo(f"audit trail NOT intact: {result.message}")
        sys.exit(1)
    click.echo(f"audit trail intact: {result.records} records (seq 1..{result.last_seq}), "
               f"{result.checkpoints} signed checkpoints verified, "
               f"{result.after_last_checkpoint} records after the last checkpoint")
    if result.last_checkpoint_seq is not None:
        click.echo(f"last checkpoint: seq {result.last_checkpoint_seq}, hash {result.last_checkpoint_hash.hex()}")


# -- serving -------------------------------------------------------------------------------------

async def _bootstrap(cfg, embedded: bool) -> None:
    """Once per `serve`, before the workers: migrations, the ceremony, the private listener's TLS files,
    the demo clients (embedded)."""
    from plumbing.runtime import check_keys, open_runtime
    from shomei.credentials import ensure_demo_client, ensure_tls_files
    from shomei.operations import run_ceremony

    rt = await open_runtime(cfg)
    try:
        for line in await run_ceremony(rt):
            log.info("ceremony: %s", line)
        await check_keys(rt)
        if cfg.server.private_tls:
            await ensure_tls_files(rt)
        if embedded or os.environ.get("SHOMEI_DEMO_CLIENTS"):
            tls = Path(cfg.var_dir) / "tls"
            await ensure_demo_client(rt, kind="terminal", name="demo-terminal", municipality_code="131016",
                                     folder=tls, operator="demo-clerk")
            await ensure_demo_client(rt, kind="feed", name="demo-feed", folder=tls)
            await ensure_demo_client(rt, kind="operations", name="demo-operator", folder=tls)
    finally:
        await rt.close()


async def serve_worker(cfg, index: int) -> None:
    """One worker process: its own database pool and token session, sharing both listeners' ports
    (SO_REUSEPORT)."""
    from aiohttp import web

    from plumbing.runtime import open_runtime
    from shomei.app import make_app
    from shomei.credentials import tls_files
    from shomei.listeners import KEEPALIVE_SECONDS, Listeners, start

    rt = await open_runtime(cfg, migrate=False, worker_index=index)
    listeners = Listeners()
    app = make_app(rt, listeners)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_SECONDS)
    await runner.setup()
    public, private = await start(runner, cfg, listeners, tls_files(cfg))
    log.info("worker %d serving %s (public) and %s (private)", index, public, private)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await rt.close()


def _worker_main(cfg, index: int, pins: dict[str, str]) -> None:
    import uvloop

    from hsm.pkcs11_signer import restore_withdrawn

    restore_withdrawn(pins)  # handed over through the process's arguments, not its environment
    _setup_logging()
    try:
        # uvloop: the same asyncio API on libuv, markedly less overhead per request and per query.
        uvloop.run(serve_worker(cfg, index))
    except ShomeiError as exc:
        log.error("worker %d cannot start: %s", index, exc.message)
        sys.exit(2)


@main.command()
@click.option("--workers", type=int, default=None, help="Worker processes (each with its own token session).")
def serve(workers: int | None) -> None:
    """Serve the HTTP API. Without DATABASE_URL, runs the embedded PostgreSQL and SoftHSM under var/."""
    def _terminate(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)  # so that start-up interrupted by SIGTERM still cleans up
    try:
        embedded = config_mod.load().embedded
        cfg = _config()
        if workers is not None:
            cfg = cfg.replace(server=cfg.server.replace(workers=workers))
        asyncio.run(_bootstrap(cfg, embedded))
        n = cfg.server.workers
        if embedded:
            srv = cfg.server
            click.echo(f"shomei: serving http://{srv.host}:{srv.port} (public) and https://{srv.private_host}:"
                       f"{srv.private_port} (private, client certificates) with {n} worker(s); demo terminal "
                       f"certificate and key in {Path(cfg.var_dir) / 'tls'}", err=True)
        if n == 1:
            _worker_main(cfg, 0, {})
        else:
            _serve_processes(cfg, n)
    except ShomeiError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass
    # The embedded PostgreSQL, if this command started it, stops at exit (see _config).


def _serve_processes(cfg, n: int) -> None:
    import tempfile

    from hsm.pkcs11_signer import withdraw_pin
    from shomei.supervisor import STATE_ENV, Supervisor

    metrics_dir = tempfile.mkdtemp(prefix="shomei-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    state_file = Path(metrics_dir) / "supervisor.json"
    os.environ[STATE_ENV] = str(state_file)
    ctx = multiprocessing.get_context("spawn")

    def start(i: int):
        proc = ctx.Process(target=_worker_main, args=(cfg, i, withdraw_pin(cfg.hsm.pin_env)),
                           name=f"shomei-worker-{i}")
        proc.start()
        return proc

    supervisor = Supervisor(start, n, state_file)

    def _stop(*_):
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    supervisor.run()
    supervisor.stop()


def _register_components() -> None:
    import crl_publisher.cli
    import ocsp_responder.cli
    import revocation.cli

    for component in (revocation.cli, crl_publisher.cli, ocsp_responder.cli):
        component.register(main)


_register_components()

if __name__ == "__main__":
    main()
