"""The public repository in a real browser (Chromium, headless, driven by Playwright): the fingerprints
on the page are those of the certificates it serves, every CRL link downloads a CRL that parses and
verifies, and the language switch works both ways. Screenshots of both languages are taken; with
SHOMEI_SCREENSHOTS=1 (`make screenshots`) they are written to docs/screenshots/ for the README."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed (make test installs the Debian package chromium)")
    return path


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


def _colon(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


async def test_repository_page(browser, public, rt, tmp_path):
    from crl_publisher.publisher import Publisher

    pub = Publisher.from_runtime(rt)
    for issuer in pub.generations():  # CRLs to list (complete and delta)
        for kind in ("base", "delta"):
            await pub.publish_many(await pub.targets(issuer, kind))
    base = str(public.make_url("")).rstrip("/")
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    resp = await page.goto(f"{base}/repository")
    assert resp.status == 200 and resp.headers["cache-control"].startswith("public")
    assert await page.get_attribute("html", "lang") == "ja"
    assert await page.inner_text("h1") == "公開リポジトリ"
    sections = page.locator("section.generation")
    assert await sections.count() == len(list(rt.issuers))
    for i in range(await sections.count()):
        section = sections.nth(i)
        der_href = await section.locator("a[data-cert=der]").get_attribute("href")
        der = await (await page.request.get(base + der_href)).body()
        cert = x509.load_der_x509_certificate(der)
        assert await section.locator("[data-fp=sha256]").inner_text() == _colon(hashlib.sha256(der).digest())
        assert await section.locator("[data-fp=sha1]").inner_text() == _colon(hashlib.sha1(der).digest())
        pem_href = await section.locator("a[data-cert=pem]").get_attribute("href")
        pem = await (await page.request.get(base + pem_href)).body()
        assert x509.load_pem_x509_certificate(pem) == cert
        crl_links = section.locator("a[data-crl]")
        assert await crl_links.count() >= 2  # the full CRL and its delta at least
        for j in range(await crl_links.count()):
            href = await crl_links.nth(j).get_attribute("href")
            got = await page.request.get(base + href)
            assert got.status == 200, href
            crl = x509.load_der_x509_crl(await got.body())
            assert crl.is_signature_valid(cert.public_key()), href
    shots = DOCS if os.environ.get("SHOMEI_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / "repository-ja.png"), full_page=False)
    await page.click("nav a[hreflang=en]")
    await page.wait_for_load_state()
    assert page.url.endswith("/repository/en")
    assert await page.get_attribute("html", "lang") == "en"
    assert await page.inner_text("h1") == "Public repository"
    first = hashlib.sha256(rt.issuers.current("signing").certificate_der).digest()
    assert _colon(first) in await page.locator("[data-fp=sha256]").all_inner_texts()  # the same table, in English
    await page.screenshot(path=str(shots / "repository-en.png"), full_page=False)
    await page.click("nav a[hreflang=ja]")
    await page.wait_for_load_state()
    assert page.url.endswith("/repository") and await page.get_attribute("html", "lang") == "ja"
