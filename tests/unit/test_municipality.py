from __future__ import annotations

import pytest

from ca_core.errors import InvalidRequest
from ca_core.municipality import prefecture_romaji, validate_code


@pytest.mark.parametrize("code,prefecture", [("131016", "Tokyo-to"), ("011002", "Hokkaido"), ("271004", "Osaka-fu"),
                                             ("401307", "Fukuoka-ken"), ("261009", "Kyoto-fu")])
def test_real_codes_validate(code, prefecture):
    assert validate_code(code) == code
    assert prefecture_romaji(code) == prefecture


@pytest.mark.parametrize("code", ["131017", "13101", "1310160", "481002", "001002", "abcdef", "１３１０１６"])
def test_bad_codes_are_refused(code):
    with pytest.raises(InvalidRequest) as err:
        validate_code(code)
    assert err.value.field == "municipality_code"
