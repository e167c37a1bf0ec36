"""The operators' status page (private listener, clients of kind `operations`): CA generations and their
expiry, CRL publication per scope (last number, age, next due, failures), revocations and holds of the
last 24 hours by reason with an hourly chart (server-rendered SVG), the token, the workers."""
from __future__ import annotations

import datetime as dt

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from ca_core.clock import JST
from ca_core.errors import ShomeiError
from crl_publisher.publisher import Target
from storage import cas, crls, revocations

_ENV = Environment(loader=PackageLoader("shomei", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
REASONS = {0: "unspecified", 1: "keyCompromise", 3: "affiliationChanged", 4: "superseded",
           5: "cessationOfOperation", 6: "certificateHold", 9: "privilegeWithdrawn"}


def _chart(hours: list[tuple[dt.datetime, int]], width: int = 720, height: int = 140) -> dict:
    """Bars of an hourly series as SVG geometry (no script, no library)."""
    top = max((n for _h, n in hours), default=0) or 1
    step = width / max(len(hours), 1)
    bars = [{"x": round(i * step + 1, 1), "w": round(step - 2, 1), "h": round((height - 20) * n / top, 1),
             "y": round(height - 20 - (height - 20) * n / top, 1), "n": n, "label": f"{h.astimezone(JST):%H}"}
            for i, (h, n) in enumerate(hours)]
    return {"width": width, "height": height, "bars": bars, "top": top}


async def page(request: web.Request, rt, plans, workers) -> web.Response:
    now = rt.clock.now()
    cfg = rt.cfg.crl
    since = now - dt.timedelta(hours=24)
    async with rt.pool.acquire() as conn:
        records = await cas.list_generations(conn)
        retired = await cas.retired_at(conn)
        latest = {r.issuer.db_id: await crls.latest_by_scope(conn, r.issuer.db_id) for r in records}
        failing = {f.path: f for f in await crls.failures(conn)}
        recent = await revocations.recent_by_hour(conn, since)
    try:
        await rt.signer.ping()
        token = "ok"
    except ShomeiError as exc:
        token = f"error: {exc.message}"
    plan_of = {(p.ca_id, p.generation): p for p in plans}
    generations, crl_rows = [], []
    for r in records:
        i = r.issuer
        p = plan_of.get((i.ca_id, i.generation))
        generations.append({
            "ca": i.ca_id, "generation": i.generation,
            "status": "current" if r.is_current else "retired" if i.db_id in retired else "previous",
            "not_after": f"{i.not_after.astimezone(JST):%Y-%m-%d}", "days_left": (i.not_after - now).days,
            "rollover_due": f"{p.rollover_due.astimezone(JST):%Y-%m-%d}" if p and p.current else "",
            "responder_until": f"{p.responder_not_after.astimezone(JST):%Y-%m-%d}" if p and p.responder_not_after else "",
            "warning": p.warning(now) if p else None})
        for (scope, kind), c in sorted(latest[i.db_id].items()):
            path = Target(i, scope, kind).path
            interval = cfg.delta_interval_minutes if kind == "delta" else cfg.full_interval_minutes
            failure = failing.get(path)
            crl_rows.append({"path": path, "number": c.number, "age_minutes": int((now - c.this_update).total_seconds() // 60),
                             "next_due": f"{(c.this_update + dt.timedelta(minutes=interval)).astimezone(JST):%Y-%m-%d %H:%M}",
                             "failure": f"{failure.attempts} attempts: {failure.error}" if failure else ""})
    by_reason: dict[str, int] = {}
    per_hour: dict[dt.datetime, int] = {}
    for hour, reason, n in recent:
        by_reason[REASONS.get(reason, str(reason))] = by_reason.get(REASONS.get(reason, str(reason)), 0) + n
        per_hour[hour] = per_hour.get(hour, 0) + n
    start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=23)
    hours = [(start + dt.timedelta(hours=k), per_hour.get(start + dt.timedelta(hours=k), 0)) for k in range(24)]
    body = _ENV.get_template("status.html").render(
        now=f"{now.astimezone(JST):%Y-%m-%d %H:%M:%S}", generations=generations, crls=crl_rows, token=token,
        workers=workers, by_reason=sorted(by_reason.items()), total=sum(by_reason.values()), chart=_chart(hours))
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"})
