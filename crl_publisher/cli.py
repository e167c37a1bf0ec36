"""`shomei crl publish` and `shomei crl status`."""
from __future__ import annotations

import click

from ca_core.kinds import KINDS
from plumbing.cli import CommandContext, command_user, pass_context
from storage import audit


def register(main: click.Group) -> None:
    main.add_command(crl)


@click.group()
def crl() -> None:
    """CRLs: publish now, and what was published."""


@crl.command("publish")
@click.option("--ca", "ca_ids", type=click.Choice(KINDS), multiple=True,
              help="CA to publish for (default: both).")
@click.option("--full", "kind", flag_value="base", help="Complete CRLs only (full and partitions).")
@click.option("--delta", "kind", flag_value="delta", help="Delta CRLs only (against the last complete CRLs).")
@click.option("--generation", type=int, help="Only this CA key generation (default: every unexpired one).")
@click.option("--partition", "partitions", type=int, multiple=True,
              help="Only these partitions (and not the full CRL).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_context
def publish(ctx: CommandContext, ca_ids, kind, generation, partitions, no_progress) -> None:
    """Publish CRLs now: by default the complete CRLs (full and every partition) and then their deltas."""
    from .publisher import Publisher

    kinds = [kind] if kind else ["base", "delta"]

    async def _run(rt):
        from tqdm import tqdm

        pub = Publisher.from_runtime(rt)
        issuers = [i for i in pub.generations(ca_ids or KINDS)
                   if generation is None or i.generation == generation]
        if not issuers:
            raise click.ClickException("no CA generation to publish for (run `shomei ceremony`)")
        lines = []
        for k in kinds:
            targets = []
            for issuer in issuers:
                targets += await pub.targets(issuer, k, list(partitions) if partitions else None,
                                             full=not partitions)
            bar = tqdm(total=None, unit=" entries", desc=f"{'complete' if k == 'base' else 'delta'} CRLs",
                       disable=no_progress, leave=False)
            try:
                outcomes = []
                if k == "base" and not partitions:
                    # every complete CRL of a generation in one pass from one snapshot (the full CRL and every
                    # partition's); a scope skipped there (lease held elsewhere) is tried again on its own
                    for issuer in issuers:
                        bar.set_postfix_str(f"{issuer.ca_id} g{issuer.generation}: every complete CRL")
                        for outcome in await pub.publish_complete(issuer, progress=bar.update):
                            outcomes.append(outcome if outcome.published
                                            else await pub.publish(outcome.target, progress=bar.update))
                else:
                    for target in targets:
                        bar.set_postfix_str(target.path)
                        outcomes.append(await pub.publish(target, progress=bar.update))
                for outcome in outcomes:
                    target = outcome.target
                    if outcome.published:
                        p = outcome.published
                        async with rt.pool.acquire() as conn:
                            await audit.record(conn, action="crl_published_by_operator", operator_id=command_user(),
                                               details={"path": target.path, "number": p.number, "entries": p.entries})
                        lines.append(f"{target.path}: number {p.number}, {p.entries} entries, {p.bytes} octets, "
                                     f"{outcome.seconds:.3f} s")
                    else:
                        lines.append(f"{target.path}: skipped ({outcome.skipped})")
            finally:
                bar.close()
        return lines

    for line in ctx.run(_run) or []:
        click.echo(line)


@crl.command("status")
@pass_context
def status(ctx: CommandContext) -> None:
    """The last CRL of each scope: number, thisUpdate, nextUpdate, entries."""
    from storage import crls

    from .publisher import Publisher, Target

    async def _run(rt):
        lines = []
        for issuer in Publisher.from_runtime(rt).generations():
            async with rt.pool.acquire() as conn:
                latest = await crls.latest_by_scope(conn, issuer.db_id)
            for (scope, kind), p in sorted(latest.items()):
                lines.append(f"{Target(issuer, scope, kind).path}: number {p.number}, this {p.this_update:%Y-%m-%d %H:%M:%S}"
                             f", next {p.next_update:%Y-%m-%d %H:%M:%S}, {p.entries} entries, {p.bytes} octets")
            if not latest:
                lines.append(f"{issuer.ca_id} g{issuer.generation}: nothing published yet")
        return lines

    for line in ctx.run(_run) or []:
        click.echo(line)
