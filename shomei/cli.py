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

    cfg = config_mod.load()
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
        return list(rt.issuers), {i.ca_id: rt.issuers.current(i.ca_id) for i in rt.issuers}

    issuers, current = ctx.run(_list)
    if not issuers:
        click.echo("no CA yet: run `shomei ceremony`")
    for i in issuers:
        mark = "current" if current.get(i.ca_id) is i else "previous"
        click.echo(f"{i.ca_id:8} g{i.generation} {mark:8} key id {i.key_id.hex()}  not after "
                   f"{i.not_after:%Y-%m-%d}\n  SHA-256 {_colon_hex(i.fingerprint_sha256)}\n"
                   f"  {i.name.human_friendly}")


@ca.command("rollover")
@click.option("--ca", "ca_id", type=click.Choice(KINDS), required=True)
@pass_context
def ca_rollover(ctx: CommandContext, ca_id: str) -> None:
    """Make a new key generation of a CA current (same name, new key)."""
    from shomei.operations import rollover

    click.echo(ctx.run(lambda rt: rollover(rt, ca_id)))


# -- clients -------------------------------------------------------------------------------------

@main.group()
def client() -> None:
    """API clients: municipal terminals, the resident-register feed, OCSP verifiers."""


@client.command("add")
@click.option("--kind", type=click.Choice(["terminal", "national", "feed", "verifier"]), required=True,
              help="terminal (a municipality's window), national (the call centre: holds anywhere), feed, verifier.")
@click.option("--name", required=True)
@click.option("--municipality", "municipality_code", help="Municipality code of a terminal.")
@pass_context
def client_add(ctx: CommandContext, kind: str, name: str, municipality_code: str | None) -> None:
    """Register a client and print its bearer credential (shown once; only its hash is stored)."""
    from ca_core.municipality import validate_code
    from storage import clients as client_store

    try:
        if kind == "terminal":
            if not municipality_code:
                raise click.UsageError("a terminal needs --municipality")
            validate_code(municipality_code)
    except ShomeiError as exc:
        fail(exc)

    async def _add(rt):
        async with rt.pool.acquire() as conn:
            if await client_store.find_by_name(conn, name):
                raise click.ClickException(f"a client named {name!r} exists")
            _c, token = await client_store.register(conn, kind=kind, name=name, municipality_code=municipality_code)
        return token

    click.echo(ctx.run(_add))


@client.command("list")
@pass_context
def client_list(ctx: CommandContext) -> None:
    """Every client: kind, municipality, when it was added, and whether it is disabled."""
    from storage import clients as client_store

    async def _list(rt):
        async with rt.pool.acquire() as conn:
            return await client_store.list_all(conn)

    for c in ctx.run(_list):
        state = f"disabled {c.disabled_at:%Y-%m-%d %H:%M}" if c.disabled_at else "enabled"
        click.echo(f"{c.name}\t{c.kind}\t{c.municipality_code or '-'}\tadded {c.created_at:%Y-%m-%d}\t{state}")


def _client_named(conn_client, name: str):
    if conn_client is None:
        raise click.ClickException(f"no client named {name!r}")
    return conn_client


@client.command("disable")
@click.argument("name")
@pass_context
def client_disable(ctx: CommandContext, name: str) -> None:
    """Disable a client's credential: every worker and host refuses it within a second."""
    from storage import clients as client_store

    async def _disable(rt):
        async with rt.pool.acquire() as conn:
            found = _client_named(await client_store.find_by_name(conn, name), name)
            done = await client_store.disable(conn, found.id)
        return f"client {name} disabled" if done else f"client {name} was already disabled"

    click.echo(ctx.run(_disable))


@client.command("rotate")
@click.argument("name")
@pass_context
def client_rotate(ctx: CommandContext, name: str) -> None:
    """Give a client a new credential (printed once); the old one stops working at once."""
    from storage import clients as client_store

    async def _rotate(rt):
        async with rt.pool.acquire() as conn:
            found = _client_named(await client_store.find_by_name(conn, name), name)
            return await client_store.rotate_token(conn, found.id)

    click.echo(ctx.run(_rotate))


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
        async with rt.pool.acquire() as conn:
            await municipalities.upsert(conn, code, name_romaji)
        return f"municipality {code} = {name_romaji}"

    click.echo(ctx.run(_add))


# -- serving -------------------------------------------------------------------------------------

async def _bootstrap(cfg, embedded: bool) -> None:
    """Once per `serve`, before the workers: migrations, the ceremony, the demo clients (embedded)."""
    from plumbing.runtime import check_keys, open_runtime
    from shomei.operations import ensure_demo_client, run_ceremony

    rt = await open_runtime(cfg)
    try:
        for line in await run_ceremony(rt):
            log.info("ceremony: %s", line)
        await check_keys(rt)
        if embedded or os.environ.get("SHOMEI_DEMO_CLIENTS"):
            var = Path(cfg.var_dir)
            await ensure_demo_client(rt, kind="terminal", name="demo-terminal", municipality_code="131016",
                                     token_file=var / "demo-terminal.token")
            await ensure_demo_client(rt, kind="feed", name="demo-feed", token_file=var / "demo-feed.token")
    finally:
        await rt.close()


async def serve_worker(cfg, index: int) -> None:
    """One worker process: its own database pool and token session, sharing the port (SO_REUSEPORT)."""
    from aiohttp import web

    from plumbing.runtime import open_runtime
    from shomei.app import make_app

    rt = await open_runtime(cfg, migrate=False, worker_index=index)
    app = make_app(rt)
    # Bounded idle time: an idle keep-alive connection is closed after 15 s (aiohttp's default is 75 s).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15)
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port, reuse_port=True, backlog=2048)
    await site.start()
    log.info("worker %d serving on http://%s:%d", index, cfg.server.host, cfg.server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await rt.close()


def _worker_main(cfg, index: int) -> None:
    import uvloop

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
            click.echo(f"shomei: serving on http://{cfg.server.host}:{cfg.server.port} with {n} worker(s); "
                       f"demo terminal credential in {Path(cfg.var_dir) / 'demo-terminal.token'}", err=True)
        if n == 1:
            _worker_main(cfg, 0)
        else:
            _serve_processes(cfg, n)
    except ShomeiError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass
    # The embedded PostgreSQL, if this command started it, stops at exit (see _config).


def _serve_processes(cfg, n: int) -> None:
    import tempfile

    from shomei.supervisor import STATE_ENV, Supervisor

    metrics_dir = tempfile.mkdtemp(prefix="shomei-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    state_file = Path(metrics_dir) / "supervisor.json"
    os.environ[STATE_ENV] = str(state_file)
    ctx = multiprocessing.get_context("spawn")

    def start(i: int):
        proc = ctx.Process(target=_worker_main, args=(cfg, i), name=f"shomei-worker-{i}")
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
