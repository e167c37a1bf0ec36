"""The two certificate kinds, which are also the ids of the two CAs that issue them (docs/domain.md)."""
from __future__ import annotations

from typing import Literal

Kind = Literal["signing", "auth"]

SIGNING: Kind = "signing"
AUTH: Kind = "auth"
KINDS: tuple[Kind, Kind] = (SIGNING, AUTH)  # in this order wherever both are listed
