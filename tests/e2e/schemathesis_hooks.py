"""Schemathesis extensions of tests/e2e/test_openapi_contract.py (loaded through SCHEMATHESIS_HOOKS).

- The binary request bodies of the API (DER OCSP requests, DER CMS SignedData of the online window) are
  sent as the raw bytes schemathesis generates for `type: string, format: binary`, as it does for
  application/octet-stream.
- OCSP refuses a request in the OCSP response status of an HTTP 200 (RFC 6960 section 2.3), so the
  negative_data_rejection check expects 200 there (tests/e2e/schemathesis.toml); this check makes sure
  that such a refusal really is one: a request that violates the schema never gets a `successful` answer.
"""
from __future__ import annotations

import schemathesis

schemathesis.serializer.alias(["application/ocsp-request", "application/pkcs7-mime"], "application/octet-stream")

OCSP_OPERATIONS = {"POST /ocsp", "GET /ocsp/{request}"}


@schemathesis.check
def ocsp_negative_data_rejection(ctx, response, case):
    """A schema-violating OCSP request is answered with an OCSP error status, never `successful`."""
    from asn1crypto import ocsp

    meta = case.meta
    if (f"{case.method.upper()} {case.path}" not in OCSP_OPERATIONS or meta is None
            or not meta.generation.mode.is_negative or response.status_code != 200):
        return None
    try:
        status = ocsp.OCSPResponse.load(response.content)["response_status"].native
    except Exception as exc:  # not an OCSPResponse at all
        raise AssertionError(f"the answer is not a DER OCSPResponse ({type(exc).__name__})") from None
    if status == "successful":
        raise AssertionError("a schema-violating OCSP request was answered `successful`")
    return True
