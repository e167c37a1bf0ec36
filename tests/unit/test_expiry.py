"""Expiry planning: rollover due dates and the operator's warnings."""
from __future__ import annotations

import datetime as dt

from ca_core.expiry import LONGEST_END_ENTITY, WARN_BEFORE, plan, retires_at

UTC = dt.timezone.utc
END = dt.datetime(2036, 1, 1, tzinfo=UTC)


def test_rollover_due_leaves_room_for_the_longest_certificate():
    p = plan("signing", 1, True, END)
    assert p.rollover_due == END - LONGEST_END_ENTITY
    assert LONGEST_END_ENTITY >= dt.timedelta(days=5 * 365 + 1)  # five years, a leap day, the last day


def test_warnings_in_words_within_180_days_of_the_due_date():
    p = plan("auth", 2, True, END)
    assert p.warning(p.rollover_due - WARN_BEFORE - dt.timedelta(days=1)) is None
    w = p.warning(p.rollover_due - dt.timedelta(days=120))
    assert w.startswith("CA auth g2: rollover due in 120 days") and "shomei ca rollover --ca auth" in w
    assert "overdue" in p.warning(p.rollover_due + dt.timedelta(days=1))
    assert plan("auth", 1, False, END).warning(END) is None  # a previous generation needs no rollover


def test_a_replaced_generation_retires_when_its_last_certificate_expires():
    replaced = END - dt.timedelta(days=4000)
    assert retires_at(END, replaced) == replaced + LONGEST_END_ENTITY
    assert retires_at(END, END - dt.timedelta(days=10)) == END  # never after the CA's own end
