"""The public repository (public listener): for relying parties and residents, in Japanese with an English
version of every page. Each CA generation's certificate (DER and PEM), its SHA-256 and SHA-1
fingerprints written the way residents compare them (colon-separated hex pairs), validity and status,
its link certificates; every CRL published (URL, number, thisUpdate, nextUpdate, entries, size); where
OCSP answers and on what terms; the CPS; dated notices of rollovers. Server-rendered HTML: nothing to
run in the browser."""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from ca_core.clock import JST
from ca_core.kinds import KINDS
from crl_publisher.publisher import Target
from storage import cas, crls

_ENV = Environment(loader=PackageLoader("shomei", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)

TEXT = {
    "ja": {
        "title": "公開リポジトリ", "lead": "認証局の証明書、証明書失効リスト（CRL）、OCSP の案内です。",
        "other": "English", "other_lang": "en", "other_path": "/repository/en",
        "cas": "認証局の証明書", "ca": {"signing": "署名用電子証明書の認証局", "auth": "利用者証明用電子証明書の認証局"},
        "generation": "世代", "status": "状態", "validity": "有効期間", "download": "ダウンロード",
        "sha256": "SHA-256 フィンガープリント", "sha1": "SHA-1 フィンガープリント",
        "states": {"current": "現行", "previous": "旧世代（失効情報の提供を継続）", "retired": "廃止（最終 CRL 公開済み）"},
        "links": "リンク証明書", "new_with_old": "新しい鍵を旧い鍵で証明（NewWithOld）",
        "old_with_new": "旧い鍵を新しい鍵で証明（OldWithNew）", "none": "なし",
        "compare": "ダウンロードした証明書のフィンガープリントが、この表の値と一致することを確認してください。",
        "crls": "証明書失効リスト（CRL）", "crl": "CRL", "number": "番号", "this_update": "発行日時",
        "next_update": "次回更新予定", "entries": "件数", "size": "サイズ（バイト）", "no_crl": "まだ公開されていません。",
        "ocsp": "OCSP", "ocsp_url": "OCSP レスポンダの URL", "access": "利用条件",
        "access_open": "どなたでも利用できます（RFC 6960 / RFC 5019）。",
        "access_verifier": "登録された検証者のみ（Authorization: Bearer）。",
        "cps": "認証実務規程（CPS）", "notices": "お知らせ", "no_notices": "お知らせはありません。",
        "rollover": ("{ca}の鍵を更新しました（第 {gen} 世代）。新しい証明書を取得し、フィンガープリントを確認して"
                     "ください。旧い世代の証明書で発行された電子証明書は、有効期限まで引き続き検証できます。"),
        "time": "時刻は日本時間（JST）です。",
    },
    "en": {
        "title": "Public repository", "lead": "The CAs' certificates, certificate revocation lists (CRLs) and OCSP.",
        "other": "日本語", "other_lang": "ja", "other_path": "/repository",
        "cas": "CA certificates", "ca": {"signing": "CA for signing certificates", "auth": "CA for user authentication certificates"},
        "generation": "Generation", "status": "Status", "validity": "Validity", "download": "Download",
        "sha256": "SHA-256 fingerprint", "sha1": "SHA-1 fingerprint",
        "states": {"current": "current", "previous": "previous (still publishing revocation status)",
                   "retired": "retired (final CRL published)"},
        "links": "Link certificates", "new_with_old": "new key certified by the old key (NewWithOld)",
        "old_with_new": "old key certified by the new key (OldWithNew)", "none": "none",
        "compare": "Check that the fingerprint of the certificate you downloaded equals the one in this table.",
        "crls": "Certificate revocation lists (CRLs)", "crl": "CRL", "number": "Number", "this_update": "This update",
        "next_update": "Next update", "entries": "Entries", "size": "Size (bytes)", "no_crl": "Nothing published yet.",
        "ocsp": "OCSP", "ocsp_url": "OCSP responder URL", "access": "Access",
        "access_open": "Open to everyone (RFC 6960 / RFC 5019).",
        "access_verifier": "Registered verifiers only (Authorization: Bearer).",
        "cps": "Certification practice statement (CPS)", "notices": "Notices", "no_notices": "No notices.",
        "rollover": ("The {ca} has a new key (generation {gen}). Fetch the new certificate and check its "
                     "fingerprint. Certificates issued under the previous generation remain verifiable until "
                     "they expire."),
        "time": "Times are Japan time (JST).",
    },
}


def colon_hex(digest: bytes) -> str:
    """AB:CD:... as residents are told to compare fingerprints."""
    return ":".join(f"{b:02X}" for b in digest)


def _jst(value: dt.datetime) -> str:
    return f"{value.astimezone(JST):%Y-%m-%d %H:%M}"


@dataclass(frozen=True)
class GenerationView:
    ca_id: str
    generation: int
    key_id: str
    status: str
    not_before: str
    not_after: str
    sha256: str
    sha1: str
    links: list[tuple[str, str]]  # (direction, path)
    crls: list[dict]


async def _views(rt) -> tuple[list[GenerationView], list[dict]]:
    async with rt.pool.acquire() as conn:
        records = await cas.list_generations(conn)
        links = await cas.list_links(conn)
        retired = await cas.retired_at(conn)
        latest = {r.issuer.db_id: await crls.latest_by_scope(conn, r.issuer.db_id) for r in records}
    views, notices = [], []
    for r in sorted(records, key=lambda r: (KINDS.index(r.issuer.ca_id), -r.issuer.generation)):
        i = r.issuer
        tbs = i.certificate["tbs_certificate"]
        status = "current" if r.is_current else "retired" if i.db_id in retired else "previous"
        published = []
        for (scope, kind), p in sorted(latest[i.db_id].items(), key=lambda kv: (kv[0][0] != "full", kv[0])):
            published.append({"path": "/crl/" + Target(i, scope, kind).path, "number": p.number,
                              "this_update": _jst(p.this_update), "next_update": _jst(p.next_update),
                              "entries": p.entries, "bytes": p.bytes})
        views.append(GenerationView(
            i.ca_id, i.generation, i.key_id.hex(), status, _jst(tbs["validity"]["not_before"].native),
            _jst(i.not_after), colon_hex(hashlib.sha256(i.certificate_der).digest()),
            colon_hex(hashlib.sha1(i.certificate_der).digest()),
            [(link.direction, f"/ca/{i.ca_id}/g{i.generation}/{link.direction.replace('_', '-')}")
             for link in links if (link.ca_id, link.new_generation) == (i.ca_id, i.generation)],
            published))
        if i.generation > 1:
            notices.append({"date": f"{tbs['validity']['not_before'].native.astimezone(JST):%Y-%m-%d}",
                            "ca_id": i.ca_id, "generation": i.generation})
    notices.sort(key=lambda n: n["date"], reverse=True)
    return views, notices


async def page(request: web.Request, rt) -> web.Response:
    """GET /repository (Japanese) and /repository/en (English), for the Runtime ``rt``."""
    lang = "en" if request.path.rstrip("/").endswith("/en") else "ja"
    views, notices = await _views(rt)
    body = _ENV.get_template("repository.html").render(
        lang=lang, t=TEXT[lang], generations=views, notices=notices, ocsp_url=f"{rt.cfg.server.public_base_url}/ocsp",
        ocsp_access=rt.cfg.ocsp.access, cps={ca: rt.cfg.ca.get(ca).cps_uri for ca in KINDS}).encode()
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"Cache-Control": "public, max-age=60", "ETag": etag, "Content-Language": lang}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)
