"""Local government codes (全国地方公共団体コード, JIS X 0402) and prefecture names in romaji."""
from __future__ import annotations

from .errors import InvalidRequest

PREFECTURES = (
    "Hokkaido", "Aomori-ken", "Iwate-ken", "Miyagi-ken", "Akita-ken", "Yamagata-ken", "Fukushima-ken",
    "Ibaraki-ken", "Tochigi-ken", "Gunma-ken", "Saitama-ken", "Chiba-ken", "Tokyo-to", "Kanagawa-ken",
    "Niigata-ken", "Toyama-ken", "Ishikawa-ken", "Fukui-ken", "Yamanashi-ken", "Nagano-ken", "Gifu-ken",
    "Shizuoka-ken", "Aichi-ken", "Mie-ken", "Shiga-ken", "Kyoto-fu", "Osaka-fu", "Hyogo-ken", "Nara-ken",
    "Wakayama-ken", "Tottori-ken", "Shimane-ken", "Okayama-ken", "Hiroshima-ken", "Yamaguchi-ken",
    "Tokushima-ken", "Kagawa-ken", "Ehime-ken", "Kochi-ken", "Fukuoka-ken", "Saga-ken", "Nagasaki-ken",
    "Kumamoto-ken", "Oita-ken", "Miyazaki-ken", "Kagoshima-ken", "Okinawa-ken",
)


def check_digit(first5: str) -> int:
    """JIS X 0402 check digit: weights 6,5,4,3,2, modulus 11, last digit of (11 - remainder)."""
    total = sum(int(d) * w for d, w in zip(first5, (6, 5, 4, 3, 2)))
    return (11 - total % 11) % 10


def validate_code(code: str, field: str = "municipality_code") -> str:
    """Check a six-digit local government code (digits, prefecture, check digit)."""
    if not isinstance(code, str) or len(code) != 6 or not code.isdigit() or not code.isascii():
        raise InvalidRequest("municipality_code must be 6 digits", field=field, code="invalid_municipality_code")
    if not 1 <= int(code[:2]) <= 47:
        raise InvalidRequest(f"municipality_code {code}: no prefecture {code[:2]}", field=field,
                             code="invalid_municipality_code")
    if int(code[5]) != check_digit(code[:5]):
        raise InvalidRequest(f"municipality_code {code}: check digit does not match", field=field,
                             code="invalid_municipality_code")
    return code


def prefecture_romaji(code: str) -> str:
    """Prefecture name in romaji for a validated municipality code."""
    return PREFECTURES[int(code[:2]) - 1]
