"""A minimal DER writer for the hot paths (certificates, CRL and OCSP framing).

asn1crypto builds every structure as a tree of Python objects, which costs milliseconds per certificate.
Constant parts of a profile are encoded once with asn1crypto; the few values that change per object are
written here as tag-length-value bytes (X.690 section 8 and 10: definite lengths, minimal encodings).
Everything produced is checked by the tests with cryptography's strict parser.
"""
from __future__ import annotations

import datetime as dt

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
OID = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18


def length(n: int) -> bytes:
    """Definite-length octets (X.690 8.1.3)."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + length(len(content)) + content


def header(tag: int, content_length: int) -> bytes:
    """The tag and length of a value whose content is streamed separately."""
    return bytes((tag,)) + length(content_length)


def sequence(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def integer(value: int) -> bytes:
    """INTEGER, minimal two's complement (X.690 8.3)."""
    if value == 0:
        return b"\x02\x01\x00"
    size = (value.bit_length() + 8) // 8 if value > 0 else ((-value - 1).bit_length() + 8) // 8
    return tlv(INTEGER, value.to_bytes(size, "big", signed=True))


def utf8(text: str) -> bytes:
    return tlv(UTF8_STRING, text.encode("utf-8"))


def octet_string(data: bytes) -> bytes:
    return tlv(OCTET_STRING, data)


def bit_string(data: bytes) -> bytes:
    """BIT STRING with no unused bits (signatures, keys)."""
    return tlv(BIT_STRING, b"\x00" + data)


def context(number: int, content: bytes, constructed: bool = True) -> bytes:
    """[number] with the given content (EXPLICIT when ``content`` is a whole TLV and constructed)."""
    return tlv((0xA0 if constructed else 0x80) | number, content)


def time(value: dt.datetime) -> bytes:
    """Time: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5), always in UTC with Z."""
    value = value.astimezone(dt.timezone.utc)
    if value.year < 2050:
        return tlv(UTC_TIME, value.strftime("%y%m%d%H%M%SZ").encode())
    return generalized_time(value)


def generalized_time(value: dt.datetime) -> bytes:
    """GeneralizedTime without fractions (RFC 5280 4.1.2.5.2)."""
    return tlv(GENERALIZED_TIME, value.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%SZ").encode())
