"""The aiohttp application: wiring of every component's routes, health, metrics and CA certificates."""
from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from ca_core.errors import NotFound, ShomeiError
from ca_core.kinds import KINDS
from plumbing.http import make_error_middleware, private
from plumbing.runtime import Runtime
from shomei.listeners import ON_PRIVATE, Listeners, listener_check
from shomei import online_page as online_page_module
from shomei import repository
from shomei import status_page as status_page_module
from shomei.operations import generation_plans
from shomei.supervisor import read_state
from storage import cas, crls, db

RT = web.AppKey("runtime", Runtime)  # the shell's own handlers (health, CA certificates) read it

log = logging.getLogger(__name__)


def _registry():
    import os
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


async def healthz(request: web.Request) -> web.Response:
    rt = request.app[RT]
    checks, warnings = {}, []
    try:
        async with rt.pool.acquire(timeout=5) as conn:
            await db.ping(conn)
            failing = await crls.failures(conn)
        checks["database"] = "ok"
        for f in failing:  # still served: the last good CRL; the schedule retries
            warnings.append(f"CRL {f.path} not published since {f.first_failed_at:%Y-%m-%dT%H:%M:%SZ} "
                            f"({f.attempts} attempts): {f.error}")
        now = rt.clock.now()
        warnings += [w for p in await generation_plans(rt) if (w := p.warning(now)) is not None]
    except Exception as exc:  # any failure is a health answer, not an error
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await rt.signer.ping()
        checks["token"] = "ok"
    except ShomeiError as exc:
        checks["token"] = f"error: {exc.message}"
    checks["cas"] = {ca: (f"g{i.generation}" if (i := rt.issuers.current(ca)) else "missing")
                     for ca in KINDS}
    checks["status_listener"] = "ok" if rt.status.up else "down"  # down: no answers from memory, still correct
    supervised = read_state()
    if supervised is not None:  # under `serve --workers N`: how many of the N are alive
        checks["workers"] = {"live": supervised["live"], "expected": supervised["expected"],
                             "restarts": supervised["restarts"]}
    ok = checks["database"] == "ok" and checks["token"] == "ok" and "missing" not in checks["cas"].values()
    if not request.get(ON_PRIVATE):  # the public listener tells a load balancer ok or not, nothing more
        return web.json_response({"status": "ok" if ok else "unavailable"}, status=200 if ok else 503)
    body = {"status": "ok" if ok else "unavailable", "checks": checks, "worker": rt.worker_index}
    if warnings:
        body["warnings"] = warnings
    return web.json_response(body, status=200 if ok else 503)


@private
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(_registry()) + await _expiry_metrics(request.app[RT])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _expiry_metrics(rt: Runtime) -> bytes:
    """Days left per CA generation (to its end, to its rollover due date) and per OCSP responder
    certificate, read at scrape time (the same in every worker, so not per-process metrics)."""
    try:
        plans = await generation_plans(rt)
    except db.DATABASE_DOWN:
        return b""
    now = rt.clock.now()
    series = {"shomei_ca_days_to_expiry": ("Days until the CA generation's certificate expires", []),
              "shomei_ca_days_to_rollover_due": ("Days until the current generation's rollover is due", []),
              "shomei_ocsp_responder_days_to_expiry": ("Days until the generation's OCSP responder certificate "
                                                       "expires (renewed automatically)", [])}
    for p in plans:
        labels = f'{{ca="{p.ca_id}",generation="{p.generation}"}}'
        series["shomei_ca_days_to_expiry"][1].append(f"{labels} {(p.not_after - now).total_seconds() / 86400:.2f}")
        if p.current:
            series["shomei_ca_days_to_rollover_due"][1].append(
                f"{labels} {(p.rollover_due - now).total_seconds() / 86400:.2f}")
        if p.responder_not_after is not None:
            series["shomei_ocsp_responder_days_to_expiry"][1].append(
                f"{labels} {(p.responder_not_after - now).total_seconds() / 86400:.2f}")
    lines = []
    for name, (help_text, samples) in series.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"] + [name + s for s in samples]
    return ("\n".join(lines) + "\n").encode()


def _issuer_or_404(rt, ca: str, key_id_hex: str | None):
    if ca not in KINDS:
        raise NotFound(f"no CA {ca!r}; CAs are 'signing' and 'auth'", field="ca", code="unknown_ca")
    if key_id_hex is None:
        issuer = rt.issuers.current(ca)
    else:
        try:
            issuer = rt.issuers.by_key_id(bytes.fromhex(key_id_hex))
        except ValueError:
            issuer = None
        if issuer is not None and issuer.ca_id != ca:
            issuer = None
    if issuer is None:
        raise NotFound(f"no certificate of CA {ca} with that key id", code="unknown_ca_generation")
    return issuer


async def _find_issuer(rt, ca: str, key_id_hex: str | None):
    try:
        return _issuer_or_404(rt, ca, key_id_hex)
    except NotFound:
        if not await rt.directory.reload_on_miss():  # a generation another process just made?
            raise
        return _issuer_or_404(rt, ca, key_id_hex)


async def ca_certificate(request: web.Request) -> web.Response:
    """GET /ca/{ca}.crt (current generation) and /ca/{ca}/{key_id}.crt (any generation), DER."""
    rt = request.app[RT]
    issuer = await _find_issuer(rt, request.match_info["ca"], request.match_info.get("key_id"))
    return web.Response(body=issuer.certificate_der, content_type="application/pkix-cert",
                        headers={"Cache-Control": "public, max-age=3600",
                                 "ETag": f'"{issuer.fingerprint_sha256[:32]}"'})


_LINKS = {"new-with-old": "new_with_old", "old-with-new": "old_with_new"}


async def link_certificate(request: web.Request) -> web.Response:
    """GET /ca/{ca}/g{gen}/new-with-old.crt|.pem and old-with-new.crt|.pem: the link certificates made
    when generation {gen} replaced the one before it (RFC 4210 4.4)."""
    rt = request.app[RT]
    ca, name = request.match_info["ca"], request.match_info["link"]
    stem, _, ext = name.rpartition(".")
    if ca not in KINDS or stem not in _LINKS or ext not in ("crt", "pem"):
        raise NotFound("no such link certificate; /ca/{ca}/g{n}/new-with-old.crt|.pem or old-with-new.crt|.pem",
                       code="unknown_link_certificate")
    generation = int(request.match_info["gen"])
    async with rt.pool.acquire() as conn:
        links = await cas.list_links(conn)
    found = next((link for link in links if (link.ca_id, link.new_generation, link.direction)
                  == (ca, generation, _LINKS[stem])), None)
    if found is None:
        raise NotFound(f"CA {ca} generation {generation} has no link certificates (not made by a rollover)",
                       code="unknown_link_certificate")
    if ext == "pem":
        from shomei.credentials import pem
        return web.Response(body=pem(found.certificate), content_type="application/x-pem-file",
                            headers={"Cache-Control": "public, max-age=3600"})
    return web.Response(body=found.certificate, content_type="application/pkix-cert",
                        headers={"Cache-Control": "public, max-age=3600"})


async def ca_certificate_pem(request: web.Request) -> web.Response:
    """GET /ca/{ca}/{key_id}.pem: a CA generation's certificate in PEM."""
    from shomei.credentials import pem

    issuer = await _find_issuer(request.app[RT], request.match_info["ca"], request.match_info["key_id"])
    return web.Response(body=pem(issuer.certificate_der), content_type="application/x-pem-file",
                        headers={"Cache-Control": "public, max-age=3600"})


async def repository_page(request: web.Request) -> web.Response:
    return await repository.page(request, request.app[RT])


async def online_page(request: web.Request) -> web.Response:
    if request.method == "GET":
        return await online_page_module.form(request)
    import revocation.http as revocation_http

    rt = request.app[RT]
    return await online_page_module.submit(request, request.app[revocation_http.ENDPOINTS].online_window,
                                           rt.cfg.revocation.online_max_body_bytes)


@private
async def status_page(request: web.Request) -> web.Response:
    """GET /status: the operators' status page (private listener, clients of kind operations)."""
    from plumbing.auth import authenticate

    rt = request.app[RT]
    await authenticate(request, rt.clients, "operations")
    return await status_page_module.page(request, rt, await generation_plans(rt), read_state())


async def ca_list(request: web.Request) -> web.Response:
    rt = request.app[RT]
    async with rt.pool.acquire() as conn:
        links = await cas.list_links(conn)
    return web.json_response({"cas": [
        {"ca": i.ca_id, "generation": i.generation, "key_id": i.key_id.hex(), "current": rt.issuers.current(i.ca_id) is i,
         "fingerprint_sha256": i.fingerprint_sha256, "not_after": i.not_after.isoformat(),
         "links": [f"/ca/{i.ca_id}/g{i.generation}/{link.direction.replace('_', '-')}.crt" for link in links
                   if (link.ca_id, link.new_generation) == (i.ca_id, i.generation)]}
        for i in rt.issuers]})


def make_app(rt: Runtime, listeners: Listeners | None = None) -> web.Application:
    """Build the application around an open Runtime, for the sites of ``listeners`` (shomei.listeners);
    without them, every site is public (private endpoints answer 404)."""
    listeners = listeners if listeners is not None else Listeners()
    import crl_publisher.http as crl_http
    import issuance.http as issuance_http
    import ocsp_responder.http as ocsp_http
    import revocation.http as revocation_http

    app = web.Application(middlewares=[make_error_middleware(listener_check(listeners))], client_max_size=rt.cfg.server.max_body_bytes)
    app[RT] = rt
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ca", ca_list)
    app.router.add_get("/ca/{ca}.crt", ca_certificate)
    app.router.add_get("/ca/{ca}/{key_id}.crt", ca_certificate)
    app.router.add_get("/ca/{ca}/{key_id}.pem", ca_certificate_pem)
    app.router.add_get("/repository", repository_page)
    app.router.add_get("/repository/en", repository_page)
    app.router.add_get("/status", status_page)
    for path in ("/online", "/online/en"):
        app.router.add_get(path, online_page)
        app.router.add_post(path, online_page)
    app.router.add_get(r"/ca/{ca}/g{gen:\d{1,6}}/{link}", link_certificate)
    for component in (issuance_http, revocation_http, crl_http, ocsp_http):
        component.setup(app, rt)
    if rt.worker_index is not None:  # `shomei serve`: every worker may sign the audit checkpoint that is due
        from plumbing.tasks import run_in_background
        from shomei.audit import checkpoint_loop

        run_in_background(app, "audit-checkpoints", lambda: checkpoint_loop(rt))

    async def status_channel(_app):  # one LISTEN connection per process, shared by its applications
        await rt.status.start()
        yield
        await rt.status.stop()

    app.cleanup_ctx.insert(0, status_channel)
    return app
