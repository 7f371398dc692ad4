"""KPIs on a small hand-made history; every expected figure is worked out in the comments."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd
import pytest

from layers.workflow.kpi import KpiInputError, case_flags, kpi_table, rank, time_per_node

AS_OF = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
NaT = pd.NaT


def t(day: int, hour: int = 0) -> pd.Timestamp:
    return pd.Timestamp(2025, 6, day, hour, tz="UTC")


# c1 A/T1 dust, closed on time, signed in time, satisfied, at (0, 0) 解放路1号
# c2 A/T1 dust, signed late, reworked once, extended, closed late, dissatisfied, at (5000, 0)
# c3 B/T2 noise, dispatched to A, returned by A, re-dispatched to B, signed in time, open,
#    conclude due 06-20 < as_of → open overdue
# c4 B/T1 dust, dispatched, never signed (sign due 06-21 passed), conclude due 07-15 (not overdue),
#    created 06-20 at (5030, 40): 50 m from c2, closed 06-12 → c2 is a repeat complaint
# c5 B merged into c4: left out everywhere (it would add an unsigned overdue case)
# c6 A/T1 dust, closed on time 06-25, basically satisfied, at (9000, 0) but address
#    "解放路 1号" = c1's after normalisation, created 06-15 after c1 closed 06-09 → c1 repeat
CASES = pd.DataFrame(
    [
        ("c1", "A", "K1", "T1", "dust", "closed", t(1), t(2, 9), t(10), t(9), "satisfied",
         0.0, 0.0, "解放路1号"),
        ("c2", "A", "K1", "T1", "dust", "closed", t(1), t(2, 9), t(10), t(12), "dissatisfied",
         5000.0, 0.0, "复兴路8号"),
        ("c3", "B", "K2", "T2", "noise", "in_progress", t(5), t(6, 9), t(20), NaT, None,
         0.0, 0.0, "矿山路"),
        ("c4", "B", "K1", "T1", "dust", "dispatched", t(20), t(21), pd.Timestamp(2025, 7, 15,
         tz="UTC"), NaT, None, 5030.0, 40.0, None),
        ("c5", "B", "K1", "T1", "dust", "merged", t(20), t(21), t(25), NaT, None,
         0.0, 0.0, "解放路1号"),
        ("c6", "A", "K1", "T1", "dust", "closed", t(15), t(16), t(28), t(25),
         "basically_satisfied", 9000.0, 0.0, "解放路 1号"),
    ],
    columns=["case_id", "body", "county_code", "township_code", "category", "state",
             "created_at", "sign_due_at", "conclude_due_at", "closed_at", "satisfaction",
             "x", "y", "address"],
)

EVENTS = pd.DataFrame(
    [
        ("c1", "receive", t(1, 0), None),
        ("c1", "dispatch", t(1, 2), "A"),
        ("c1", "sign", t(2, 8), "A"),
        ("c1", "start", t(3), "A"),
        ("c1", "rectify", t(5), "A"),
        ("c1", "verify_pass", t(6), "A"),
        ("c1", "feedback", t(7), "A"),
        ("c1", "return_visit", t(8), "A"),
        ("c1", "close", t(9), "A"),
        ("c2", "dispatch", t(1, 2), "A"),
        ("c2", "sign", t(3, 2), "A"),
        ("c2", "start", t(4), "A"),
        ("c2", "rectify", t(5), "A"),
        ("c2", "verify_fail", t(6), "A"),
        ("c2", "extension_request", t(6, 5), "A"),
        ("c2", "extension_approve", t(6, 6), "A"),
        ("c2", "rectify", t(8), "A"),
        ("c2", "verify_pass", t(9), "A"),
        ("c2", "feedback", t(10), "A"),
        ("c2", "return_visit", t(11), "A"),
        ("c2", "close", t(12), "A"),
        ("c3", "dispatch", t(5, 2), "A"),
        ("c3", "return", t(5, 8), "A"),
        ("c3", "dispatch", t(5, 10), "B"),
        ("c3", "sign", t(6, 8), "B"),
        ("c3", "start", t(7), "B"),
        ("c4", "dispatch", t(20, 2), "B"),
        ("c5", "dispatch", t(20, 2), "B"),
        ("c5", "merge", t(20, 3), "B"),
        ("c6", "dispatch", t(15, 2), "A"),
        ("c6", "sign", t(15, 8), "A"),
        ("c6", "start", t(16), "A"),
        ("c6", "rectify", t(18), "A"),
        ("c6", "verify_pass", t(19), "A"),
        ("c6", "feedback", t(20), "A"),
        ("c6", "return_visit", t(22), "A"),
        ("c6", "close", t(25), "A"),
    ],
    columns=["case_id", "action", "at", "body"],
)


def rates(table: pd.DataFrame, row: str) -> dict[str, float]:
    return table.loc[row].to_dict()


def test_overall_kpis() -> None:
    k = rates(kpi_table(CASES, EVENTS, AS_OF), "all")
    assert k["cases"] == 5  # c5 (merged) left out
    # signed in time: c1 ✓, c2 ✗ (06-03 > 06-02 09:00), c3 ✓, c4 unsigned & overdue ✗, c6 ✓
    assert (k["signed_in_time_num"], k["signed_in_time_den"]) == (3, 5)
    # on time: closed c1 ✓, c2 ✗ (06-12 > 06-10), c6 ✓; open overdue c3 → 2 / 4 (not 2 / 3)
    assert (k["closed_on_time_num"], k["closed_on_time_den"]) == (2, 4)
    assert k["closed_on_time"] == 0.5
    assert k["closure"] == pytest.approx(3 / 5)
    # verified cases c1, c2, c6; c2 failed once
    assert k["rework"] == pytest.approx(1 / 3)
    # dispatches: c1, c2, c3 ×2, c4, c6 = 6; returns: 1
    assert (k["return_num"], k["return_den"]) == (1, 6)
    # approved extensions: c2 / 5 dispatched cases
    assert k["extension"] == pytest.approx(1 / 5)
    # answers: c1 satisfied, c2 dissatisfied, c6 basically satisfied → 2 / 3
    assert k["satisfaction"] == pytest.approx(2 / 3)
    # repeats among closed c1 (by address, c6), c2 (50 m, c4), c6 (nothing after) → 2 / 3
    assert (k["repeat_num"], k["repeat_den"]) == (2, 3)


def test_repeat_needs_same_place() -> None:
    flags = case_flags(CASES, EVENTS, AS_OF, repeat_radius_m=49.0)
    # at 49 m c4 is no longer at c2's place; c1's address match does not depend on distance
    assert flags.loc["c2", "repeat_num"] == 0 and flags.loc["c1", "repeat_num"] == 1
    flags = case_flags(CASES, EVENTS, AS_OF, repeat_window_days=5)
    # c6 came 6 days after c1 closed; c4 8 days after c2 closed: both outside a 5-day window
    assert flags["repeat_num"].sum() == 0


def test_per_body_with_rankings() -> None:
    table = kpi_table(CASES, EVENTS, AS_OF, by="body")
    a, b = rates(table, "A"), rates(table, "B")
    assert (a["cases"], b["cases"]) == (3, 2)
    assert a["signed_in_time"] == pytest.approx(2 / 3) and b["signed_in_time"] == 0.5
    assert a["closed_on_time"] == pytest.approx(2 / 3) and b["closed_on_time"] == 0.0
    assert (a["closure"], b["closure"]) == (1.0, 0.0)
    assert a["rework"] == pytest.approx(1 / 3) and math.isnan(b["rework"])
    # returns by the body that had the case: A got 4 dispatches (c1, c2, c3, c6) and returned 1;
    # B got 2 (c3 again, c4) and returned none
    assert (a["return_num"], a["return_den"], b["return_num"], b["return_den"]) == (1, 4, 0, 2)
    assert a["extension"] == pytest.approx(1 / 3) and b["extension"] == 0.0
    assert a["satisfaction"] == pytest.approx(2 / 3) and math.isnan(b["satisfaction"])
    assert rank(table, "closed_on_time").to_dict() == {"A": 1, "B": 2}
    assert rank(table, "return").to_dict() == {"A": 2, "B": 1}  # lower is better
    assert rank(table, "rework").to_dict() == {"A": 1, "B": 2}  # NaN ranks last
    with pytest.raises(KpiInputError, match="unknown KPI"):
        rank(table, "speed")


def test_per_township() -> None:
    table = kpi_table(CASES, EVENTS, AS_OF, by="township_code")
    # T1: c1, c2, c4, c6 — 3 closed of 4; T2: c3 — 0 of 1
    assert table.loc["T1", "closure"] == 0.75 and table.loc["T2", "closure"] == 0.0
    # return rate per township uses the case's township: c3's 1 return of 2 dispatches
    assert table.loc["T2", "return"] == 0.5


def test_time_per_node() -> None:
    out = time_per_node(CASES, EVENTS)
    # accept: c1's intake 00:00 → dispatch 02:00, and c3 back with the dispatcher after its
    # return 08:00 → re-dispatch 10:00: two spells of 2 h
    assert out.loc["accept", "mean"] == 2.0 and out.loc["accept", "count"] == 2
    # sign (dispatch → next step): c1 30 h, c2 48 h, c3 6 h (returned) and 22 h, c6 6 h;
    # c4's is still running, c5 ended by the merge after 1 h
    assert out.loc["sign", "count"] == 6
    assert out.loc["sign", "mean"] == pytest.approx((30 + 48 + 6 + 22 + 6 + 1) / 6)
    per_body = time_per_node(CASES, EVENTS, by="body")
    # case body B: c3 two spells (6 h, 22 h) + c5 (1 h) = 3 spells, mean 29 / 3
    assert per_body.loc[("B", "sign"), "count"] == 3
    assert per_body.loc[("B", "sign"), "mean"] == pytest.approx(29 / 3)


def test_missing_columns_are_named() -> None:
    with pytest.raises(KpiInputError, match="closed_at"):
        kpi_table(CASES.drop(columns="closed_at"), EVENTS, AS_OF)
    with pytest.raises(KpiInputError, match="timezone-aware"):
        kpi_table(CASES, EVENTS, datetime(2025, 6, 30))
