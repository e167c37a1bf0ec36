"""Expiry planning of CA generations: when a generation must be replaced (its remaining life becomes
shorter than the longest end-entity validity, so certificates issued after that would be cut short at
the CA's notAfter) and how long it and its OCSP responder certificate have left."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# The longest a resident's certificate lives: to the end of the 5th birthday after issuance (at most five
# years and a day, a leap day included).
LONGEST_END_ENTITY = dt.timedelta(days=5 * 365 + 2)
WARN_BEFORE = dt.timedelta(days=180)  # operators are told in words this long before a rollover is due


@dataclass(frozen=True)
class GenerationPlan:
    ca_id: str
    generation: int
    current: bool
    not_after: dt.datetime
    rollover_due: dt.datetime  # not_after - LONGEST_END_ENTITY
    responder_not_after: dt.datetime | None

    def warning(self, now: dt.datetime) -> str | None:
        """What an operator must be told now about this generation, in words; None when nothing."""
        if not self.current:
            return None
        left = self.rollover_due - now
        if left <= dt.timedelta(0):
            return (f"CA {self.ca_id} g{self.generation}: rollover overdue since {self.rollover_due:%Y-%m-%d}; "
                    f"new certificates are cut short at the CA's end ({self.not_after:%Y-%m-%d}): "
                    f"run `shomei ca rollover --ca {self.ca_id}`")
        if left <= WARN_BEFORE:
            return (f"CA {self.ca_id} g{self.generation}: rollover due in {left.days} days "
                    f"({self.rollover_due:%Y-%m-%d}): plan `shomei ca rollover --ca {self.ca_id}`")
        return None


def plan(ca_id: str, generation: int, current: bool, not_after: dt.datetime,
         responder_not_after: dt.datetime | None = None) -> GenerationPlan:
    return GenerationPlan(ca_id, generation, current, not_after, not_after - LONGEST_END_ENTITY, responder_not_after)


def retires_at(not_after: dt.datetime, replaced_at: dt.datetime) -> dt.datetime:
    """When a generation replaced at ``replaced_at`` has no unexpired certificate left: its last
    certificate lives at most LONGEST_END_ENTITY, and never past the CA's own notAfter."""
    return min(not_after, replaced_at + LONGEST_END_ENTITY)
