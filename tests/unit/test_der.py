"""The minimal DER writer agrees with asn1crypto on every form it writes."""
from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import core, x509

from ca_core import der


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, -1, -128, -129, 2 ** 127 - 1, 2 ** 159, 2 ** 64])
def test_integer(value):
    assert der.integer(value) == core.Integer(value).dump()


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65535, 65536, 10 ** 7])
def test_lengths(size):
    assert der.octet_string(b"\0" * size) == core.OctetString(b"\0" * size).dump()


def test_strings_and_times():
    assert der.utf8("山田") == core.UTF8String("山田").dump()
    t = dt.datetime(2031, 5, 15, 14, 59, 59, tzinfo=dt.timezone.utc)
    assert der.time(t) == x509.Time(name="utc_time", value=t).dump()
    late = dt.datetime(2050, 1, 1, tzinfo=dt.timezone.utc)
    assert der.time(late) == x509.Time(name="general_time", value=late).dump()
    jst = dt.datetime(2031, 5, 15, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert der.time(jst) == der.time(t)


def test_explicit_context_and_bit_string():
    assert der.context(0, der.integer(2)) == bytes.fromhex("a003020102")
    assert der.bit_string(b"\x01\x02") == core.BitString.load(bytes.fromhex("0303000102")).dump()
