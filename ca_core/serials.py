"""Certificate serial numbers (RFC 5280 section 4.1.2.2; CA/B BR 7.1: at least 64 random bits).

Serials are 16 octets with the top bit clear: always positive, always the same length (so byte order is
numeric order in storage), 127 random bits. Uniqueness is enforced by the database; a collision is
retried by the caller.
"""
from __future__ import annotations

import secrets

SERIAL_OCTETS = 16


def new_serial() -> int:
    """A fresh random positive serial of exactly 16 octets."""
    while True:
        raw = bytearray(secrets.token_bytes(SERIAL_OCTETS))
        raw[0] &= 0x7F
        if raw[0]:
            return int.from_bytes(raw, "big")


def serial_bytes(serial: int) -> bytes:
    """Big-endian octets of a serial as stored (16 octets for ours; minimal for others)."""
    return serial.to_bytes(max(SERIAL_OCTETS, (serial.bit_length() + 7) // 8), "big")


def serial_hex(serial: int) -> str:
    return format(serial, "x").rjust(SERIAL_OCTETS * 2, "0")


def parse_serial_hex(text: str) -> int:
    """Parse a hex serial as given in API paths and bodies; raises ValueError."""
    if not isinstance(text, str) or not 1 <= len(text) <= 40:
        raise ValueError("serial must be 1 to 40 hex digits")
    value = int(text, 16)
    if value <= 0:
        raise ValueError("serial must be positive")
    return value
