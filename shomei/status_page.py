"""The operators' status page (private listener, clients of kind `operations`): CA generations and their
expiry, CRL publication per scope (last number, age, next due, failures), revocations and holds of the
last 24 hours by reason with an hourly chart, OCSP answers and misses per minute over the last hour with a
chart (server-rendered SVG), the feed's backlog, the token, the workers. Everything shown is read from
PostgreSQL, so any process on any host shows the same page."""
from __future__ import annotations

import datetime as dt

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from ca_core.clock import JST
from ca_core.errors import ShomeiError
from crl_publisher.publisher import Target
from storage import cas, crls, feed_events, revocations
from storage import ocsp as ocsp_store

_ENV = Environment(loader=PackageLoader("shomei", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
FEED_STALLED = dt.timedelta(minutes=10)  # a feed batch not advanced for this long was cut off
REASONS = {0: "unspecified", 1: "keyCompromise", 3: "affiliationChanged", 4: "superseded",
           5: "cessationOfOperation", 6: "certificateHold", 9: "privilegeWithdrawn"}


def _chart(labels: list[str], series: list[list[int]], width: int = 720, height: int = 140,
           ticks: list[bool] | None = None) -> dict:
    """Bars of one or more series over the same slots as SVG geometry (no script, no library); later
    series are drawn over the earlier ones, so a part (misses) shows inside its whole (answers)."""
    top = max((n for values in series for n in values), default=0) or 1
    step = width / max(len(labels), 1)
    scale = (height - 20) / top
    bars = [[{"x": round(i * step + 1, 1), "w": round(max(step - 2, 1), 1), "h": round(scale * n, 1),
              "y": round(height - 20 - scale * n, 1), "n": n, "label": label}
             for i, (label, n) in enumerate(zip(labels, values))] for values in series]
    marks = [{"x": round(i * step + 1, 1), "label": label} for i, label in enumerate(labels) if ticks is None or ticks[i]]
    return {"width": width, "height": height, "series": bars, "ticks": marks, "top": top}


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
        # OCSP counts are kept by the wall clock of the answering processes.
        wall = dt.datetime.now(dt.timezone.utc)
        per_minute = await ocsp_store.minutes(conn, wall - dt.timedelta(minutes=61))
        feed = await feed_events.backlog(conn, now, FEED_STALLED)
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
    hours = [start + dt.timedelta(hours=k) for k in range(24)]
    revocation_chart = _chart([f"{h.astimezone(JST):%H}" for h in hours], [[per_hour.get(h, 0) for h in hours]])
    first = wall.replace(second=0, microsecond=0) - dt.timedelta(minutes=59)
    slots = [first + dt.timedelta(minutes=k) for k in range(60)]
    zero = (0, 0, 0)
    ocsp_chart = _chart([f"{m.astimezone(JST):%H:%M}" for m in slots],
                        [[per_minute.get(m, zero)[0] for m in slots], [per_minute.get(m, zero)[1] for m in slots]],
                        ticks=[m.minute % 10 == 0 for m in slots])
    last = per_minute.get(slots[-2], zero)  # the last whole minute
    body = _ENV.get_template("status.html").render(
        now=f"{now.astimezone(JST):%Y-%m-%d %H:%M:%S}", generations=generations, crls=crl_rows, token=token,
        workers=workers, by_reason=sorted(by_reason.items()), total=sum(by_reason.values()), chart=revocation_chart,
        ocsp_chart=ocsp_chart, ocsp_last={"answers": last[0], "misses": last[1], "errors": last[2]},
        ocsp_hour={k: sum(per_minute.get(m, zero)[i] for m in slots) for i, k in enumerate(("answers", "misses", "errors"))},
        feed=feed, feed_last=f"{feed.last_applied_at.astimezone(JST):%Y-%m-%d %H:%M:%S}" if feed.last_applied_at else "never",
        feed_outcomes=sorted(feed.last_day.items()))
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"})
