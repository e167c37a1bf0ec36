"""The OpenAPI document is true to the code: schemathesis runs every operation of schemas/openapi.yaml
against the whole application (real PostgreSQL, real SoftHSM token) with all of its default checks
(`schemathesis run` without --checks), and any finding fails the test.

The application is served by this test's own event loop (the `http` fixture), so schemathesis runs as a
subprocess (asyncio, never blocking the loop). Every run goes to the private listener (HTTPS, which serves
every operation, /metrics and the detailed /healthz included), trusting the operations CA
(--tls-verify) and presenting a client certificate (--request-cert, --request-cert-key). Operations need
different credentials, so it runs once per group of operations, each with that group's certificate and
headers:

- terminal: the municipal window (the terminal's certificate and X-Operator-Id of its registered operator);
- feed: the resident-register feed (the feed's certificate);
- public: OCSP, CRLs, CA certificates, the online window, health and metrics (no identity is looked at; a
  certificate is still needed for the private listener's handshake: the terminal's, without an operator).

So that requests reach more than "not found", certificates are issued first and their serials and
resident codes are offered to schemathesis (a dictionary drawn from half of the time for `serial` and
`resident_code`), and the CRLs are published. Checks are configured, narrowly and per operation with the
reason, in tests/e2e/schemathesis.toml; tests/e2e/schemathesis_hooks.py holds the serializers of the
binary media types and an OCSP-specific check.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import issue, issue_body
from tests.tls_clients import Credential, make_credential

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "openapi.yaml"
CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
EXE = str(Path(sys.executable).with_name("schemathesis"))

SEED = 20240601        # fixed: the same requests on every run
MAX_EXAMPLES = 100     # per operation in the fuzzing phase; the whole test stays well under two minutes
TIMEOUT = 120          # seconds for one schemathesis run before the test gives up
OPERATOR = "clerk-01"

GROUPS = {
    "terminal": ("/v1/certificates", "/v1/certificate-batches", "/v1/revocations", "/v1/holds", "/v1/holds/release"),
    "feed": ("/v1/residency-events",),
    "public": ("/v1/online/revocations", "/v1/online/validity-checks", "/ca", "/ca/{ca}.crt",
               "/ca/{ca}/{key_id}.crt", "/crl/{ca}/{name}", "/crl/{ca}/{generation}/{name}", "/ocsp",
               "/ocsp/{request}", "/healthz", "/metrics"),
}
# Every phase of `schemathesis run`; the stateful one follows the document's links, all of which are
# between public operations (schemathesis counts a run without any link to follow as an error).
PHASES = {"terminal": "examples,coverage,fuzzing", "feed": "examples,coverage,fuzzing",
          "public": "examples,coverage,fuzzing,stateful"}


# Residents of this test, each with both certificates, by the operations that may use them: the window's
# revocations, its holds and releases (the holds run first), and the feed.
TARGETS = {"revocations": 2, "holds": 2, "feed": 2}


@pytest.fixture(scope="module")
async def contract(rt, http, keys, tmp_path_factory):
    """This test's own clients with their certificates (so its request and event ids are its own),
    certificates of residents of its own for schemathesis to find, and the CRLs published."""
    from crl_publisher.publisher import Publisher

    folder = tmp_path_factory.mktemp("openapi-contract-clients")
    terminal = await make_credential(rt, folder, kind="terminal", name="openapi-contract-terminal",
                                     municipality_code="131016", operators=(OPERATOR,))
    feed = await make_credential(rt, folder, kind="feed", name="openapi-contract-feed")
    targets = {}
    for use, count in TARGETS.items():
        serials, residents = [], []
        for n in range(count):
            body = issue_body(keys, request_id=f"openapi-contract-{use}-{n}")
            data = await issue(http, terminal, body)
            residents.append(body["resident_code"])
            serials += [c["serial"] for c in data["certificates"]]
        targets[use] = {"serials": serials, "residents": residents}
    await Publisher.from_runtime(rt).run_due()  # as `shomei serve` does on its schedule
    return {"terminal": terminal, "feed": feed, "targets": targets}


def test_every_operation_is_in_one_group():
    paths = set(yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))["paths"])
    grouped = [p for group in GROUPS.values() for p in group]
    assert sorted(grouped) == sorted(paths), "every path of the schema is run in exactly one group"


def _config(workdir: Path, targets: dict) -> Path:
    """tests/e2e/schemathesis.toml plus this session's identifiers: dictionaries that schemathesis draws
    from half of the time for the fields naming a certificate or a resident."""
    extra = []
    for use, found in targets.items():
        if use != "feed":  # events name residents only
            extra += [f"[dictionaries.{use}-serials]", f"values = {json.dumps(found['serials'])}"]
        extra += [f"[dictionaries.{use}-residents]", f"values = {json.dumps(found['residents'])}"]
    for use, selector in (("revocations", 'include-name = "POST /v1/revocations"'),
                          ("holds", 'include-name-regex = "^POST /v1/holds"')):
        extra += ["[[operations]]", selector,
                  f'parameters = {{ "body.serial" = {{ dictionary = "{use}-serials", probability = 0.5 }}, '
                  f'"body.resident_code" = {{ dictionary = "{use}-residents", probability = 0.5 }} }}']
    extra += ["[[operations]]", 'include-name = "POST /v1/residency-events"',
              'parameters = { "body.events[*].resident_code" = { dictionary = "feed-residents", probability = 0.5 } }']
    path = workdir / "schemathesis.toml"
    path.write_text(CONFIG.read_text(encoding="utf-8") + "\n# Added by the test\n" + "\n".join(extra) + "\n",
                    encoding="utf-8")
    return path


async def _schemathesis(config: Path, base_url: str, group: str, credential: Credential,
                        headers: dict[str, str]):
    args = [EXE, "--config-file", str(config), "run", str(SCHEMA), "--url", base_url, "--phases", PHASES[group],
            "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
            "--generation-database", "none", "--no-color", "--output-truncate", "false",
            "--continue-on-failure",
            "--tls-verify", str(credential.ca_file),
            "--request-cert", str(credential.cert_file), "--request-cert-key", str(credential.key_file)]
    for path in GROUPS[group]:
        args += ["--include-path", path]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    env["SCHEMATHESIS_HOOKS"] = str(HOOKS)
    proc = await asyncio.create_subprocess_exec(*args, cwd=config.parent, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return None, out.decode(errors="replace")
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("group", list(GROUPS))
async def test_openapi_contract(http, contract, group):
    base_url = str(http.make_url("/")).rstrip("/")  # the private listener (https)
    assert base_url.startswith("https://"), base_url
    credential, headers = {
        "terminal": (contract["terminal"], {"X-Operator-Id": OPERATOR}),
        "feed": (contract["feed"], {}),
        "public": (contract["terminal"], {}),
    }[group]
    with tempfile.TemporaryDirectory(prefix="schemathesis-") as workdir:
        config = _config(Path(workdir), contract["targets"])
        status, output = await _schemathesis(config, base_url, group, credential, headers)
    if status != 0:
        print(output)  # the findings, each with a curl command to reproduce it
    assert status == 0, f"schemathesis: findings in the {group} operations (exit status {status}); see its output above"


async def test_crls_are_sound_after_the_contract_run(rt, http, contract):
    """Whatever schemathesis made the window and the feed record, the next full CRLs carry it in entries
    a relying party can read (an invalidity date of the year 132 once made every CRL unreadable)."""
    from cryptography import x509

    from crl_publisher.publisher import Publisher, Target

    for ca in ("signing", "auth"):
        issuer = rt.issuers.current(ca)
        outcome = await Publisher.from_runtime(rt).publish(Target(issuer, "full", "base"))
        assert outcome.published is not None, outcome.skipped
        resp = await http.get(f"/crl/{ca}/full.crl")
        assert resp.status == 200
        crl = x509.load_der_x509_crl(await resp.read())
        assert crl.is_signature_valid(x509.load_der_x509_certificate(issuer.certificate_der).public_key())
        for entry in crl:
            list(entry.extensions)  # every entry extension decodes
