"""The online window's web page (public listener), for residents: upload an application file made by the
card's client software (or `shomei online revoke|check --out FILE`), choose the procedure, and see the
result screen: accepted, valid, revoked, or each error with its message in Japanese and English (never
a raw error). The same service and checks as POST /v1/online/*."""
from __future__ import annotations

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from ca_core import online
from ca_core.errors import ShomeiError

_ENV = Environment(loader=PackageLoader("shomei", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
PROCEDURES = ("revocation", "validity_check")

TEXT = {
    "ja": {"title": "オンライン窓口", "other": "English", "other_lang": "en", "other_path": "/online/en",
           "lead": "マイナンバーカードの利用者クライアントソフトで作成した申請ファイルを選び、手続を選んで送信してください。",
           "file": "申請ファイル", "procedure": "手続", "revocation": "電子証明書の失効申請",
           "validity_check": "電子証明書の有効性確認", "submit": "送信", "result": "結果", "back": "戻る",
           "code": "コード", "outcomes": {
               "accepted": "失効申請を受け付けました。次回の失効情報（CRL）の発行時に失効します。",
               "valid": "電子証明書は有効です。", "revoked": "電子証明書は失効しています。",
               "revocation_accepted": "この電子証明書の失効申請は受付済みです。"},
           "error": "申請を処理できませんでした。", "no_file": "申請ファイルを選択してください。"},
    "en": {"title": "Online window", "other": "日本語", "other_lang": "ja", "other_path": "/online",
           "lead": "Choose the application file made by the card's client software, choose the procedure and send it.",
           "file": "Application file", "procedure": "Procedure", "revocation": "Revoke my certificate",
           "validity_check": "Check my certificate's validity", "submit": "Send", "result": "Result", "back": "Back",
           "code": "Code", "outcomes": {
               "accepted": "Your revocation application has been accepted. It takes effect when the next CRL is issued.",
               "valid": "The certificate is valid.", "revoked": "The certificate has been revoked.",
               "revocation_accepted": "A revocation of this certificate has already been accepted."},
           "error": "The application could not be processed.", "no_file": "Choose an application file."},
}


def _lang(request: web.Request) -> str:
    return "en" if request.path.rstrip("/").endswith("/en") else "ja"


def _render(lang: str, **kw) -> web.Response:
    body = _ENV.get_template("online.html").render(lang=lang, t=TEXT[lang], procedures=PROCEDURES, **kw)
    return web.Response(text=body, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "Content-Language": lang})


async def form(request: web.Request) -> web.Response:
    return _render(_lang(request))


async def submit(request: web.Request, window, max_bytes: int) -> web.Response:
    """The result screen of an uploaded application (``window``: the revocation component's OnlineWindow)."""
    lang = _lang(request)
    procedure, body = "revocation", b""
    try:
        reader = await request.multipart()
        async for part in reader:
            if part.name == "procedure":
                procedure = (await part.text())[:32]
            elif part.name == "application":
                chunks, size = [], 0
                while chunk := await part.read_chunk(8192):  # never more than max_bytes in memory
                    size += len(chunk)
                    if size > max_bytes:
                        raise online.online_error("payload_too_large", procedure)
                    chunks.append(chunk)
                body = b"".join(chunks)
        if procedure not in PROCEDURES:
            raise online.online_error("malformed", "revocation")
        if not body:
            return _render(lang, error={"code": "no_file", "message": TEXT[lang]["no_file"]}, procedure=procedure)
        window.try_enter(procedure)
        try:
            answer = await window.handle(procedure, body)
        finally:
            window.leave()
    except ShomeiError as exc:
        code = exc.code if exc.code in online.MESSAGES else "malformed"
        en, ja = online.messages(code, procedure)
        return _render(lang, error={"code": code, "message": ja if lang == "ja" else en,
                                    "other": en if lang == "ja" else ja}, procedure=procedure)
    except (ValueError, AssertionError):  # not a multipart body
        en, ja = online.messages("malformed", procedure)
        return _render(lang, error={"code": "malformed", "message": ja if lang == "ja" else en,
                                    "other": en if lang == "ja" else ja}, procedure=procedure)
    outcome = answer.get("result") or answer.get("status")
    return _render(lang, outcome=outcome, answer=answer, procedure=procedure)
