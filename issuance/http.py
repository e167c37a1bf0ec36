"""POST /v1/certificates: terminal-authenticated issuance."""
from __future__ import annotations

from typing import Annotated

from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ca_core.clock import format_rfc3339
from ca_core.resident import BasicFour
from ca_core.serials import serial_hex
from plumbing.auth import ClientCache, authenticate, operator_id
from plumbing.http import private, read_model

from .service import IssuanceService, IssueRequest

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


def _pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()


class IssuanceEndpoints:
    """The HTTP face of issuance: terminals only."""

    def __init__(self, service: IssuanceService, clients: ClientCache, max_body_bytes: int):
        self.service = service
        self.clients = clients
        self.max_body_bytes = max_body_bytes

    @private
    async def post_certificates(self, request: web.Request) -> web.Response:
        client = await authenticate(request, self.clients, "terminal")
        operator = await operator_id(request, self.clients, client)
        body = await read_model(request, IssueBody, self.max_body_bytes)
        result = await self.service.issue(client, operator, body.to_request())
        payload = {"request_id": body.request_id, "certificates": [
            {"kind": c.kind, "serial": serial_hex(c.serial), "certificate": _pem(c.der),
             "not_after": format_rfc3339(c.not_after)}
            for c in result.certificates]}
        return web.json_response(payload, status=201 if result.created else 200)


ENDPOINTS = web.AppKey("issuance", IssuanceEndpoints)


def setup(app: web.Application, rt) -> None:
    endpoints = app[ENDPOINTS] = IssuanceEndpoints(IssuanceService.from_runtime(rt), rt.clients,
                                                   rt.cfg.server.max_body_bytes)
    app.router.add_post("/v1/certificates", endpoints.post_certificates)
