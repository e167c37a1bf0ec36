"""Rules on the basic 4 information (docs/domain.md: characters, birth date, sex, eligibility)."""
from __future__ import annotations

import datetime as dt

import pytest

from ca_core.errors import InvalidRequest, PolicyViolation
from ca_core.resident import (BasicFour, age_on, check_resident_code, check_signing_eligibility, in_repertoire,
                              nth_birthday_after, parse_birth_date, resident_hash)

TODAY = dt.date(2026, 11, 22)


def basic4(**over):
    data = dict(name="山田　太郎", name_substitutes="00000", address="東京都千代田区", address_substitutes="0000000",
                birth_date="319800515", sex="1")
    data.update(over)
    return BasicFour(**data)


@pytest.mark.parametrize("ch", ["山", "あ", "ア", "１", "Ａ", "　", "〒", "鷗", "ß", "－", "～"])
def test_jis_characters_are_in_repertoire(ch):
    assert in_repertoire(ch)


@pytest.mark.parametrize("ch", ["A", "1", " ", "ｱ", "髙", "𠮷", "\u0000", "😀", "€"])
def test_characters_outside_jis_x_0208_0212_are_not(ch):
    assert not in_repertoire(ch)


def test_valid_basic4_returns_birth_date():
    assert basic4().validate(TODAY) == dt.date(1980, 5, 15)


def test_character_outside_repertoire_names_field_and_character():
    with pytest.raises(InvalidRequest) as err:
        basic4(name="髙橋", name_substitutes="00").validate(TODAY)
    assert err.value.code == "character_not_allowed"
    assert err.value.field == "resident.name"
    assert "U+9AD9" in err.value.message and "髙" in err.value.message


def test_substitute_character_with_flag_is_accepted():
    basic4(name="高橋", name_substitutes="10").validate(TODAY)


@pytest.mark.parametrize("flags", ["0000", "000000", "00a00", ""])
def test_flags_of_wrong_length_or_alphabet_are_refused(flags):
    with pytest.raises(InvalidRequest) as err:
        basic4(name_substitutes=flags).validate(TODAY)
    assert err.value.code == "substitute_flags_mismatch"
    assert err.value.field == "resident.name_substitutes"


def test_address_longer_than_200_characters_is_refused():
    with pytest.raises(InvalidRequest) as err:
        basic4(address="東" * 201, address_substitutes="0" * 201).validate(TODAY)
    assert err.value.code == "too_long"


@pytest.mark.parametrize("sex", ["0", "4", "male", "", "11"])
def test_invalid_sex_code(sex):
    with pytest.raises(InvalidRequest) as err:
        basic4(sex=sex).validate(TODAY)
    assert err.value.code == "invalid_sex"


@pytest.mark.parametrize("value", ["19800515", "619800515", "319800230", "419800515", "519800515", "3198005150",
                                   "x19800515", "530001010"])
def test_invalid_birth_dates(value):
    with pytest.raises(InvalidRequest) as err:
        parse_birth_date(value, TODAY)
    assert err.value.code == "invalid_birth_date"


@pytest.mark.parametrize("value,day", [("319890107", dt.date(1989, 1, 7)), ("419890108", dt.date(1989, 1, 8)),
                                       ("520190501", dt.date(2019, 5, 1)), ("019890108", dt.date(1989, 1, 8)),
                                       ("119120729", dt.date(1912, 7, 29)), ("219120730", dt.date(1912, 7, 30))])
def test_era_boundaries(value, day):
    assert parse_birth_date(value, TODAY) == day


def test_fifth_birthday_after_issuance():
    assert nth_birthday_after(dt.date(1980, 5, 15), TODAY, 5) == dt.date(2031, 5, 15)
    # issued on the birthday itself: that birthday does not count
    assert nth_birthday_after(dt.date(1980, 11, 22), TODAY, 5) == dt.date(2031, 11, 22)


def test_leap_day_birthday_falls_on_28_february():
    assert nth_birthday_after(dt.date(2000, 2, 29), TODAY, 5) == dt.date(2031, 2, 28)
    assert nth_birthday_after(dt.date(2000, 2, 29), TODAY, 2) == dt.date(2028, 2, 29)


def test_age():
    assert age_on(dt.date(2011, 11, 23), TODAY) == 14
    assert age_on(dt.date(2011, 11, 22), TODAY) == 15


def test_signing_certificate_refused_under_15():
    with pytest.raises(PolicyViolation) as err:
        check_signing_eligibility(dt.date(2011, 11, 23), TODAY, adult_ward=False)
    assert err.value.code == "applicant_under_15"
    check_signing_eligibility(dt.date(2011, 11, 22), TODAY, adult_ward=False)


def test_signing_certificate_refused_to_adult_ward():
    with pytest.raises(PolicyViolation) as err:
        check_signing_eligibility(dt.date(1970, 1, 1), TODAY, adult_ward=True)
    assert err.value.code == "applicant_adult_ward"


@pytest.mark.parametrize("code", ["1234567890", "123456789012", "1234567890a", "１２３４５６７８９０１"])
def test_resident_code_must_be_11_ascii_digits(code):
    with pytest.raises(InvalidRequest):
        check_resident_code(code)


def test_resident_hash_is_keyed():
    assert resident_hash(b"k" * 32, "12345678901") != resident_hash(b"j" * 32, "12345678901")
    assert resident_hash(b"k" * 32, "12345678901") == resident_hash(b"k" * 32, "12345678901")
    assert b"12345678901" not in resident_hash(b"k" * 32, "12345678901")
