"""`shomei ocsp ...`: operator commands of the OCSP responder."""
from __future__ import annotations

import datetime as dt

import click

from plumbing.cli import CommandContext, pass_context


def register(main: click.Group) -> None:
    main.add_command(ocsp)


@click.group()
def ocsp() -> None:
    """OCSP responder."""


@ocsp.command("usage")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (JST), default: 30 days ago.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (JST), default: today.")
@pass_context
def usage(ctx: CommandContext, since, until) -> None:
    """Answers per registered verifier and day, for billing (access policy `verifier`)."""
    from ca_core.clock import JST
    from storage import ocsp as ocsp_store

    today = dt.datetime.now(JST).date()
    first = since.date() if since else today - dt.timedelta(days=30)
    last = until.date() if until else today

    async def _report(rt):
        async with rt.pool.acquire() as conn:
            return await ocsp_store.usage_report(conn, first, last)

    rows = ctx.run(_report)
    if not rows:
        click.echo(f"no verifier answers between {first} and {last}")
    for name, day, answers in rows or []:
        click.echo(f"{name}\t{day}\t{answers}")
