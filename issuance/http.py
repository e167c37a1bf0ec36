"""POST /v1/certificates and /v1/certificate-batches: terminal-authenticated issuance."""
from __future__ import annotations

import ssl
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ca_core import errors
from ca_core.clock import format_rfc3339
from ca_core.resident import BasicFour
from ca_core.serials import serial_hex
from plumbing.auth import ClientCache, authenticate, operator_id
from plumbing.http import private, read_model, status_for

from .service import IssuanceService, IssueRequest, IssueResult

RequestId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ResidentBody(_Strict):
    name: str
    name_substitutes: str
    address: str
    address_substitutes: str
    birth_date: str
    sex: str


class IssueBody(_Strict):
    request_id: RequestId
    municipality_code: str
    resident_code: str
    resident: ResidentBody
    card_expires_on: str
    signing_csr: str | None = None
    auth_csr: str | None = None
    adult_ward: bool = False
    card_replaced: bool = False

    @field_validator("signing_csr", "auth_csr", mode="before")
    @classmethod
    def _not_null(cls, value):
        """A CSR not requested is left out, never null (as the OpenAPI document says)."""
        if value is None:
            raise ValueError("null is not allowed; leave the field out")
        return value

    def to_request(self) -> IssueRequest:
        return IssueRequest(
            request_id=self.request_id, municipality_code=self.municipality_code,
            resident_code=self.resident_code, resident=BasicFour(**self.resident.model_dump()),
            card_expires_on=self.card_expires_on, signing_csr=self.signing_csr, auth_csr=self.auth_csr,
            adult_ward=self.adult_ward, card_replaced=self.card_replaced)


class IssueBatchBody(_Strict):
    requests: list[IssueBody] = Field(min_length=1)


def _certificates(result: IssueResult) -> list[dict]:
    return [{"kind": c.kind, "serial": serial_hex(c.serial), "certificate": ssl.DER_cert_to_PEM_cert(c.der),
             "not_after": format_rfc3339(c.not_after)} for c in result.certificates]


def _batch_item(request_id: str, outcome: IssueResult | errors.ShomeiError) -> dict:
    if isinstance(outcome, errors.ShomeiError):
        return {"request_id": request_id, "status": status_for(outcome), "error": outcome.as_dict()}
    return {"request_id": request_id, "status": 201 if outcome.created else 200,
            "certificates": _certificates(outcome)}


class IssuanceEndpoints:
    """The HTTP face of issuance: terminals only."""

    def __init__(self, service: IssuanceService, clients: ClientCache, max_body_bytes: int, *,
                 batch_max_requests: int = 100, batch_max_body_bytes: int = 2 << 20):
        self.service = service
        self.clients = clients
        self.max_body_bytes = max_body_bytes
        self.batch_max_requests = batch_max_requests
        self.batch_max_body_bytes = batch_max_body_bytes

    @private
    async def post_certificates(self, request: web.Request) -> web.Response:
        client = await authenticate(request, self.clients, "terminal")
        operator = await operator_id(request, self.clients, client)
        body = await read_model(request, IssueBody, self.max_body_bytes)
        result = await self.service.issue(client, operator, body.to_request())
        payload = {"request_id": body.request_id, "certificates": _certificates(result)}
        return web.json_response(payload, status=201 if result.created else 200)

    @private
    async def post_certificate_batches(self, request: web.Request) -> web.Response:
        """Many issuances in one request (a municipality setting up a delivery of new cards before the
        residents collect them): each item is issued as POST /v1/certificates would issue it, and answers
        in its place with its own status. A malformed batch is refused whole, and so is a batch the
        database or the token cannot serve at all (503: nothing was issued)."""
        client = await authenticate(request, self.clients, "terminal")
        operator = await operator_id(request, self.clients, client)
        body = await read_model(request, IssueBatchBody, self.batch_max_body_bytes)
        if len(body.requests) > self.batch_max_requests:
            raise errors.InvalidRequest(f"at most {self.batch_max_requests} requests in a batch", field="requests",
                                        code="batch_too_large")
        seen: set[str] = set()
        for n, item in enumerate(body.requests):
            if item.request_id in seen:
                raise errors.InvalidRequest("a request_id appears twice in the batch",
                                            field=f"requests.{n}.request_id", code="duplicate_request_id")
            seen.add(item.request_id)
        outcomes = await self.service.issue_batch(client, operator, [item.to_request() for item in body.requests])
        if all(isinstance(o, errors.Unavailable) for o in outcomes):
            raise outcomes[0]  # nothing could be issued: 503 with Retry-After, for the whole batch
        return web.json_response({"results": [_batch_item(item.request_id, outcome)
                                              for item, outcome in zip(body.requests, outcomes)]})


ENDPOINTS = web.AppKey("issuance", IssuanceEndpoints)


def setup(app: web.Application, rt) -> None:
    endpoints = app[ENDPOINTS] = IssuanceEndpoints(
        IssuanceService.from_runtime(rt), rt.clients, rt.cfg.server.max_body_bytes,
        batch_max_requests=rt.cfg.issuance.batch_max_requests,
        batch_max_body_bytes=rt.cfg.issuance.batch_max_body_bytes)
    app.router.add_post("/v1/certificates", endpoints.post_certificates)
    app.router.add_post("/v1/certificate-batches", endpoints.post_certificate_batches)
