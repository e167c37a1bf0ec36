"""The resident's "basic 4 information" and the rules on it (docs/domain.md: characters, birth date, sex).

Names and addresses may only use the JIS X 0208 and JIS X 0212 repertoire. A character outside it is
replaced at the window by a substitute; the flag string beside the field has one '0' or '1' per
character (1 = substitute), so its length equals the field's length.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import InvalidRequest, PolicyViolation

MAX_ADDRESS_CHARS = 200
MAX_NAME_CHARS = 100

# Japanese eras (元号) and the first Gregorian day of each; the era digit of EYYYYMMDD.
ERAS = (
    (1, "Meiji", dt.date(1868, 1, 25)),
    (2, "Taisho", dt.date(1912, 7, 30)),
    (3, "Showa", dt.date(1926, 12, 25)),
    (4, "Heisei", dt.date(1989, 1, 8)),
    (5, "Reiwa", dt.date(2019, 5, 1)),
)

SEX_CODES = {"1": "male", "2": "female", "3": "unknown", "9": "not applicable"}

_JIS_X_0208 = (b"\x1b$B", b"\x1b$@")
_JIS_X_0212 = b"\x1b$(D"


# JIS X 0208 row-1 characters that Windows input methods produce under other code points (the
# Microsoft mapping of the same JIS code): accepted as the same characters.
_VENDOR_VARIANTS = frozenset("\uff0d\uff5e\u2225\uffe0\uffe1\uffe2")


@lru_cache(maxsize=65536)
def in_repertoire(ch: str) -> bool:
    """True when ``ch`` is a character of JIS X 0208 or JIS X 0212 (ISO-2022-JP-1 escapes tell which set)."""
    if ch in _VENDOR_VARIANTS:
        return True
    try:
        encoded = ch.encode("iso2022_jp_1")
    except UnicodeEncodeError:
        return False
    return encoded.startswith(_JIS_X_0208) or encoded.startswith(_JIS_X_0212)


def check_text(value: str, flags: str, *, field: str, flags_field: str, max_chars: int) -> None:
    """Check a name or address and its substitute flags; raises InvalidRequest naming the field."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string", field=field, code="invalid_value")
    if len(value) > max_chars:
        raise InvalidRequest(f"{field} has {len(value)} characters; at most {max_chars} are allowed",
                             field=field, code="too_long")
    for pos, ch in enumerate(value):
        if not in_repertoire(ch):
            raise PolicyViolation(
                f"{field} contains U+{ord(ch):04X} {ch!r} at position {pos + 1}, which is outside the "
                "JIS X 0208/0212 repertoire; replace it with a substitute character and set its flag",
                field=field, code="character_not_allowed")
    if not isinstance(flags, str) or len(flags) != len(value):
        raise PolicyViolation(
            f"{flags_field} must have one flag per character of {field} ({len(value)}), "
            f"got {len(flags) if isinstance(flags, str) else 'none'}",
            field=flags_field, code="substitute_flags_mismatch")
    if flags.strip("01"):
        raise PolicyViolation(f"{flags_field} may only contain '0' and '1'",
                             field=flags_field, code="substitute_flags_mismatch")


def era_of(day: dt.date) -> int:
    """The era digit (1..5) in force on ``day``; 0 before Meiji."""
    digit = 0
    for number, _name, start in ERAS:
        if day >= start:
            digit = number
    return digit


_BIRTH = re.compile(r"^([0-5])(\d{4})(\d{2})(\d{2})$")


def parse_birth_date(value: str, today: dt.date, field: str = "resident.birth_date") -> dt.date:
    """Parse EYYYYMMDD (era digit + Gregorian date); the era must match the date unless it is 0."""
    m = _BIRTH.match(value) if isinstance(value, str) else None
    if not m:
        raise PolicyViolation("birth_date must be EYYYYMMDD: an era digit 0-5 and a Gregorian date",
                             field=field, code="invalid_birth_date")
    try:
        day = dt.date(int(m.group(2)), int(m.group(3)), int(m.group(4)))
    except ValueError:
        raise PolicyViolation(f"birth_date {value!r} is not a calendar date", field=field,
                             code="invalid_birth_date") from None
    era = int(m.group(1))
    if era != 0 and era != era_of(day):
        raise PolicyViolation(f"birth_date {value!r}: era digit {era} does not match {day.isoformat()} "
                             f"(era {era_of(day)})", field=field, code="invalid_birth_date")
    if day > today:
        raise PolicyViolation("birth_date is in the future", field=field, code="invalid_birth_date")
    return day


def nth_birthday_after(birth: dt.date, after: dt.date, n: int) -> dt.date:
    """The n-th birthday strictly after ``after``. A 29 February birthday falls on 28 February in
    common years (年齢計算ニ関スル法律: a year of age is completed at the end of the day before)."""
    def birthday_in(year: int) -> dt.date:
        try:
            return birth.replace(year=year)
        except ValueError:
            return dt.date(year, 2, 28)

    first = birthday_in(after.year)
    if first <= after:
        first = birthday_in(after.year + 1)
    return birthday_in(first.year + n - 1)


def age_on(birth: dt.date, day: dt.date) -> int:
    """Completed years of age on ``day``."""
    years = day.year - birth.year
    if (day.month, day.day) < (birth.month, birth.day):
        years -= 1
    return years


@dataclass(frozen=True)
class BasicFour:
    """The basic 4 information (基本4情報) as recorded in a signing certificate."""

    name: str
    name_substitutes: str
    address: str
    address_substitutes: str
    birth_date: str  # EYYYYMMDD as given
    sex: str

    def validate(self, today: dt.date) -> dt.date:
        """Check every field; returns the birth date. Raises InvalidRequest naming the field."""
        check_text(self.name, self.name_substitutes, field="resident.name",
                   flags_field="resident.name_substitutes", max_chars=MAX_NAME_CHARS)
        check_text(self.address, self.address_substitutes, field="resident.address",
                   flags_field="resident.address_substitutes", max_chars=MAX_ADDRESS_CHARS)
        if self.sex not in SEX_CODES:
            raise PolicyViolation("sex must be one of 1 (male), 2 (female), 3 (unknown), 9 (not applicable)",
                                 field="resident.sex", code="invalid_sex")
        return parse_birth_date(self.birth_date, today)


MIN_SIGNING_AGE = 15


def check_signing_eligibility(birth: dt.date, today: dt.date, adult_ward: bool) -> None:
    """Signing certificates are not issued to persons under 15 or to adult wards (docs/domain.md,
    eligibility)."""
    if age_on(birth, today) < MIN_SIGNING_AGE:
        raise PolicyViolation("a signing certificate cannot be issued to a person under 15",
                              field="resident.birth_date", code="applicant_under_15")
    if adult_ward:
        raise PolicyViolation("a signing certificate cannot be issued to an adult ward",
                              field="adult_ward", code="applicant_adult_ward")


def check_resident_code(code, field: str = "resident_code") -> str:
    """住民票コード: eleven digits."""
    if not isinstance(code, str) or len(code) != 11 or not code.isascii() or not code.isdigit():
        raise InvalidRequest("resident_code must be 11 digits", field=field, code="invalid_resident_code")
    return code


def resident_hash(key: bytes, code: str) -> bytes:
    """Keyed hash of a resident code: the code itself is never stored (docs/architecture.md, facts
    that shaped the design)."""
    import hmac
    import hashlib

    return hmac.new(key, code.encode("ascii"), hashlib.sha256).digest()
