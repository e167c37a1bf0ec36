"""The online window's page in a real browser (headless Chromium, Playwright): a resident uploads an
application file and sees the screen the manual describes: valid, accepted, and for a tampered
application, an expired certificate and a replay their errors, in Japanese with English."""
from __future__ import annotations

import datetime as dt
import os

from asn1crypto import cms

from ca_core.clock import FixedClock
from revocation import online_client
from tests.e2e.test_repository_browser import DOCS, browser  # noqa: F401 (the browser fixture)
from tests.integration.revocation_support import APPLICANT, new_holder


async def _submit(page, base: str, path, procedure: str, lang: str = "ja", shots=None) -> tuple[str, str]:
    """Upload ``path`` as the application of ``procedure``; returns ("outcome"|"error", its code). With
    ``shots``, a screenshot of the result screen named after it."""
    await page.goto(f"{base}/online" + ("/en" if lang == "en" else ""))
    await page.set_input_files("#application", str(path))
    await page.check(f"#procedure-{procedure}")
    await page.click("button[type=submit]")
    await page.wait_for_selector(".result")
    outcome = await page.get_attribute(".result", "data-outcome")
    result = ("outcome", outcome) if outcome else ("error", await page.get_attribute(".result", "data-error"))
    if shots is not None:
        await page.screenshot(path=str(shots / f"online-{result[1].replace('_', '-')}-{lang}.png"))
    return result


async def test_online_window_page(browser, public, http, terminal, keys, tmp_path):  # noqa: F811
    from revocation.http import ENDPOINTS

    holder = await new_holder(http, terminal, keys)
    base = str(public.make_url("")).rstrip("/")
    page = await browser.new_page(viewport={"width": 900, "height": 700})
    await page.goto(f"{base}/online")
    assert await page.get_attribute("html", "lang") == "ja"
    assert await page.inner_text("label[for=application]") == "申請ファイル"  # every field has its label

    shots = DOCS if os.environ.get("SHOMEI_SCREENSHOTS") else tmp_path
    await page.screenshot(path=str(shots / "online-form-ja.png"))
    check = tmp_path / "check.p7m"
    check.write_bytes(holder.application("auth", "validity_check"))
    assert await _submit(page, base, check, "validity_check", shots=shots) == ("outcome", "valid")
    assert "電子証明書は有効です" in await page.inner_text(".result")

    # the same file again: a replay
    assert await _submit(page, base, check, "validity_check", shots=shots) == ("error", "replayed")
    text = await page.inner_text(".result")
    assert "replay" in text.lower() or "再送" in text or "既に" in text, text

    # tampered: the content swapped under a valid signature over the attributes
    tampered = cms.ContentInfo.load(holder.application("auth", "revocation"))
    tampered["content"]["encap_content_info"]["content"] = online_client.document(
        "revocation", holder.serial("auth"), APPLICANT)
    bad = tmp_path / "tampered.p7m"
    bad.write_bytes(tampered.dump(force=True))
    assert await _submit(page, base, bad, "revocation", lang="en", shots=shots) == (
        "error", "application_signature_invalid")
    assert await page.get_attribute("html", "lang") == "en"

    # an expired certificate: the window's clock thirty years on
    window = http.app[ENDPOINTS].online_window
    saved = window.clock
    later = saved.now() + dt.timedelta(days=365 * 30)
    window.clock = FixedClock(later)
    try:
        old = tmp_path / "old.p7m"
        old.write_bytes(holder.application("auth", "validity_check", issued_at=later))
        assert await _submit(page, base, old, "validity_check", shots=shots) == ("error", "certificate_expired")
        assert "有効期限" in await page.inner_text(".result")
    finally:
        window.clock = saved

    # and a real revocation: accepted
    revoke = tmp_path / "revoke.p7m"
    revoke.write_bytes(holder.application("auth", "revocation"))
    assert await _submit(page, base, revoke, "revocation", shots=shots) == ("outcome", "accepted")
    assert "失効申請を受け付けました" in await page.inner_text(".result")


async def test_online_page_refuses_what_is_not_an_application(public):
    """No file, an oversize file, a body that is not a form: a screen with the error, never a 500."""
    import aiohttp

    for data, code in ((b"", "no_file"), (b"\x30" * 100_000, "payload_too_large")):
        form = aiohttp.FormData()  # as a browser sends it, an empty file input included
        form.add_field("procedure", "revocation")
        form.add_field("application", data, filename="a.p7m" if data else "", content_type="application/octet-stream")
        resp = await public.post("/online", data=form)
        assert resp.status == 200 and f'data-error="{code}"' in await resp.text(), code
    resp = await public.post("/online", data=b"junk", headers={"Content-Type": "text/plain"})
    assert resp.status == 200 and 'data-error="malformed"' in await resp.text()
