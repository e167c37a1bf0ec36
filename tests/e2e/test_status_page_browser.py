"""The operators' status page in a real browser (headless Chromium with an operations client
certificate, on the private listener): CA generations with their expiry, CRL publication, the last
24 hours of revocations with an hourly chart, OCSP answers per minute, the feed's backlog, the token. Other client kinds get 403; the public
listener does not serve it."""
from __future__ import annotations

import os

from tests.e2e.test_repository_browser import DOCS, browser  # noqa: F401 (the browser fixture)
from tests.integration.revocation_support import new_holder, post, rid
from tests.tls_clients import make_credential


async def test_status_page(browser, http, public, rt, terminal, keys, stack_dir, tmp_path):  # noqa: F811
    ops = await make_credential(rt, stack_dir / "clients", kind="operations", operators=())
    holder = await new_holder(http, terminal, keys)
    st, body = await post(http, "/v1/holds", terminal, {"request_id": rid(), "serial": holder.hex("auth")})
    assert st == 201, body
    # OCSP traffic on the public listener: the first answer is a miss, the repeats come from memory.
    from cryptography import x509

    from tests.ocsp_helpers import get_path, request_der
    ca = x509.load_der_x509_certificate(rt.issuers.current("signing").certificate_der)
    der = request_der(holder.certs["signing"], ca)
    for _ in range(5):
        async with public.get(get_path(der)) as resp:
            assert resp.status == 200
    base = str(http.make_url("")).rstrip("/")
    context = await browser.new_context(
        client_certificates=[{"origin": base, "certPath": str(ops.cert_file), "keyPath": str(ops.key_file)}],
        ignore_https_errors=True, viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    resp = await page.goto(f"{base}/status")
    assert resp.status == 200
    assert await page.inner_text("[data-token]") == "ok"
    rows = page.locator("#generations tbody tr[data-ca]")
    assert await rows.count() == len(list(rt.issuers))
    current = rt.issuers.current("signing")
    row = page.locator(f'#generations tr[data-ca=signing][data-generation="{current.generation}"]')
    assert await row.locator("[data-status]").inner_text() == "current"
    assert int(await page.inner_text("[data-total]")) >= 1  # the hold above, at least
    assert "certificateHold" in await page.inner_text("#reasons")
    assert await page.locator("#revocations-chart rect").count() == 24
    # The answers reach the page within a flush (every few seconds), counted in the per-minute chart.
    for _ in range(40):
        answers = int(await page.inner_text("[data-ocsp-hour-answers]"))
        if answers >= 5:
            break
        await page.wait_for_timeout(500)
        await page.reload()
    assert answers >= 5 and int(await page.inner_text("[data-ocsp-hour-misses]")) >= 1
    assert await page.locator("#ocsp-chart .series-1 rect").count() == 60
    assert sum([int(n) for n in await page.locator("#ocsp-chart .series-1 rect").evaluate_all(
        "rs => rs.map(r => r.dataset.n)")]) == answers
    # The feed's backlog as the database has it (earlier tests may have left batches cut off).
    from shomei.status_page import FEED_STALLED
    from storage import feed_events
    async with rt.pool.acquire() as conn:
        backlog = await feed_events.backlog(conn, rt.clock.now(), FEED_STALLED)
    assert int(await page.inner_text("[data-feed-waiting]")) == backlog.waiting
    assert int(await page.inner_text("[data-feed-stalled]")) == backlog.stalled
    shots = DOCS if os.environ.get("SHOMEI_SCREENSHOTS") else tmp_path
    await page.screenshot(path=str(shots / "status.png"), full_page=True)
    await context.close()
    # other kinds and the public listener
    resp = await http.get("/status", ssl=terminal.ssl)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "wrong_client_kind"
    resp = await public.get("/status")
    assert resp.status == 404


async def test_status_page_shows_a_new_rollover(browser, pg, tmp_path):  # noqa: F811
    """On a service of its own (a rollover changes the current CA): the page shows g1 current, then,
    after `rollover`, g2 current and g1 previous."""
    import secrets

    from ca_core import config
    from ca_core.clock import SystemClock
    from hsm.software_signer import SoftwareSigner
    from plumbing.auth import ClientCache
    from plumbing.runtime import IssuerDirectory, Runtime
    from plumbing.status_channel import StatusChannel
    from shomei.credentials import ensure_tls_files
    from shomei.operations import rollover, run_ceremony
    from storage import db
    from tests.services.test_rollover import own_database
    from tests.tls_clients import TestServers

    async with own_database(pg) as url:
        pool = await db.create_pool(url, min_size=1, max_size=4)
        cfg = config.load(env={}).replace(database_url=url, var_dir=str(tmp_path / "var"))
        rt = Runtime(cfg=cfg, clock=SystemClock(), pool=pool, signer=SoftwareSigner(), directory=IssuerDirectory(pool),
                     resident_key=secrets.token_bytes(32), clients=ClientCache(pool), status=StatusChannel(url, pool))
        servers = None
        try:
            await run_ceremony(rt)
            tls = await ensure_tls_files(rt)
            ops = await make_credential(rt, tmp_path / "clients", kind="operations", operators=())
            servers = await TestServers.start(rt, tls)
            base = str(servers.private.make_url("")).rstrip("/")
            context = await browser.new_context(
                client_certificates=[{"origin": base, "certPath": str(ops.cert_file), "keyPath": str(ops.key_file)}],
                ignore_https_errors=True)
            page = await context.new_page()

            async def status_of(generation: int) -> str:
                row = page.locator(f'#generations tr[data-ca=signing][data-generation="{generation}"]')
                return await row.locator("[data-status]").inner_text() if await row.count() else "absent"

            await page.goto(f"{base}/status")
            assert (await status_of(1), await status_of(2)) == ("current", "absent")
            assert "generation 2 is now current" in await rollover(rt, "signing")
            await page.reload()
            assert (await status_of(1), await status_of(2)) == ("previous", "current")
            await context.close()
        finally:
            if servers is not None:
                await servers.close()
            await pool.close()
