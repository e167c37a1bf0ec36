"""Command-line commands of this component, registered on the `shomei` group.

`shomei online revoke|check`: the resident's client of the online window (builds and signs the CMS
application with a key file or a PKCS#11 token, the card's role, and submits it).
`shomei feed import FILE`: loads a file of resident-register events (JSON lines) in batches, with a
progress bar; safe to run again (events are idempotent by event id).
"""
from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

DEFAULT_URL = "http://127.0.0.1:8080"  # the public listener: the online window
PRIVATE_URL = "https://127.0.0.1:8443"  # the private listener: the feed, with the feed's client certificate


def _post(url: str, data: bytes, headers: dict, timeout: float = 300, context=None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"error": {"code": "http_error", "message": body[:200].decode("utf-8", "replace")}}
        return exc.code, payload, dict(exc.headers)


def _load_certificate(path: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    raw = Path(path).read_bytes()
    if b"-----BEGIN" in raw:
        return x509.load_pem_x509_certificate(raw).public_bytes(Encoding.DER)
    return x509.load_der_x509_certificate(raw).public_bytes(Encoding.DER)


def _signer(key: str | None, pkcs11_module: str | None, token_label: str | None, pin_file: str | None,
            key_label: str | None):
    from . import online_client

    if key:
        from cryptography.hazmat.primitives.serialization import load_der_private_key, load_pem_private_key

        raw = Path(key).read_bytes()
        loader = load_pem_private_key if b"-----BEGIN" in raw else load_der_private_key
        return online_client.key_signer(loader(raw, password=None))
    if pkcs11_module and token_label and pin_file and key_label:
        pin = Path(pin_file).read_text().strip()
        return online_client.pkcs11_signer(pkcs11_module, token_label, pin, key_label)
    raise click.UsageError("give --key FILE, or --pkcs11-module, --token-label, --pin-file and --key-label")


def _online_command(procedure: str, path: str):
    @click.option("--cert", "cert_path", required=True, help="The card's certificate (PEM or DER).")
    @click.option("--key", "key_path", help="The card's private key (PEM or DER), standing in for the card.")
    @click.option("--pkcs11-module", help="PKCS#11 module of the card (instead of --key).")
    @click.option("--token-label")
    @click.option("--pin-file", type=click.Path(exists=True, dir_okay=False))
    @click.option("--key-label")
    @click.option("--name", help="Applicant's name (default: from a signing certificate).")
    @click.option("--address")
    @click.option("--birth-date", help="EYYYYMMDD, as in the certificate.")
    @click.option("--sex", help="1 male, 2 female, 3 unknown, 9 not applicable.")
    @click.option("--url", default=DEFAULT_URL, show_default=True, help="Base URL of the service.")
    @click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write the signed application to this file instead of sending it (for the online "
                       "window's web page).")
    def command(cert_path, key_path, pkcs11_module, token_label, pin_file, key_label, name, address, birth_date,
                sex, url, out_path):
        from . import online_client

        cert_der = _load_certificate(cert_path)
        sign = _signer(key_path, pkcs11_module, token_label, pin_file, key_label)
        applicant = online_client.applicant_from_certificate(cert_der) or {}
        given = {"name": name, "address": address, "birth_date": birth_date, "sex": sex}
        applicant.update({k: v for k, v in given.items() if v})
        missing = [k for k in given if not applicant.get(k)]
        if missing:
            raise click.UsageError(f"give --{missing[0].replace('_', '-')} (an auth certificate holds no basic-4 "
                                   "information)")
        der = online_client.build(procedure, cert_der, sign, applicant)
        if out_path is not None:
            out_path.write_bytes(der)
            click.echo(f"application written to {out_path} ({len(der)} octets)")
            return
        status, body, _headers = _post(url.rstrip("/") + path, der, {"Content-Type": online_client.CONTENT_TYPE},
                                       timeout=60)
        if status >= 400:
            err = body.get("error", {})
            click.echo(f"{err.get('code')}: {err.get('message')}", err=True)
            if err.get("message_ja"):
                click.echo(err["message_ja"], err=True)
            sys.exit(1)
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))

    return command


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _batches(path: Path, size: int):
    batch = []
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                batch.append(line.rstrip(b"\r\n"))
                if len(batch) >= size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def register(main: click.Group) -> None:
    @main.group()
    def online() -> None:
        """The online window, as a resident uses it (the card's role played by a key file or token)."""

    online.command("revoke", help="Apply for the revocation of the certificate (失効申請).")(
        _online_command("revocation", "/v1/online/revocations"))
    online.command("check", help="Ask whether the certificate is valid (有効性確認).")(
        _online_command("validity_check", "/v1/online/validity-checks"))

    @main.group()
    def feed() -> None:
        """The resident-register feed (住基連携)."""

    @feed.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--url", default=PRIVATE_URL, show_default=True, help="The private listener.")
    @click.option("--cert", "cert_file", type=click.Path(dir_okay=False, path_type=Path),
                  default=Path("var/tls/demo-feed.crt"), show_default=True, help="The feed's client certificate.")
    @click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
                  default=Path("var/tls/demo-feed.key"), show_default=True, help="Its private key.")
    @click.option("--cacert", "ca_file", type=click.Path(dir_okay=False, path_type=Path),
                  default=Path("var/tls/operations-ca.pem"), show_default=True,
                  help="The CA of the server's certificate (the operations CA).")
    @click.option("--batch-size", type=click.IntRange(1, 200_000), default=20_000, show_default=True)
    @click.option("--retries", type=click.IntRange(0, 100), default=5, show_default=True)
    def feed_import(file: Path, url: str, cert_file: Path, key_file: Path, ca_file: Path, batch_size: int,
                    retries: int) -> None:
        """Send the events of FILE (JSON lines: event_id, resident_code, kind, occurred_at) in batches.
        Safe to run again: events already applied are answered 'duplicate'."""
        import ssl

        from tqdm import tqdm

        from plumbing.tls import client_context

        try:
            context = client_context(ca_file, cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise click.ClickException(f"cannot load the feed's TLS credentials: {exc}") from None
        headers = {"Content-Type": "application/x-ndjson"}
        totals = {"applied": 0, "duplicate": 0, "no_certificate": 0, "issued_after_event": 0, "rejected": 0}
        rejected = []
        with tqdm(total=_count_lines(file), unit="event", desc="feed", file=sys.stderr) as bar:
            for batch in _batches(file, batch_size):
                data = b"\n".join(batch) + b"\n"
                for attempt in range(retries + 1):
                    try:
                        status, body, hdrs = _post(url.rstrip("/") + "/v1/residency-events", data, headers,
                                                   context=context)
                    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                        status, body, hdrs = 0, {"error": {"code": "unreachable", "message": str(exc)}}, {}
                    if status in (0, 503) and attempt < retries:
                        time.sleep(float(hdrs.get("Retry-After", 2)))
                        continue
                    break
                if status != 200:
                    err = body.get("error", {})
                    raise click.ClickException(f"batch refused ({status} {err.get('code')}): {err.get('message')}; "
                                               "run the import again to resume")
                for key, n in body["summary"].items():
                    totals[key] = totals.get(key, 0) + n
                rejected.extend(r for r in body["results"] if r["outcome"] == "rejected")
                bar.update(len(batch))
                bar.set_postfix(applied=totals["applied"], duplicate=totals["duplicate"])
        click.echo(" ".join(f"{k}={v}" for k, v in totals.items()))
        for r in rejected[:20]:
            click.echo(f"rejected {r.get('event_id')}: {r.get('reason')}", err=True)
        if len(rejected) > 20:
            click.echo(f"... and {len(rejected) - 20} more rejected", err=True)
