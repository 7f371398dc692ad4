"""Deadline rules: regimes, strictest rule wins, fallbacks, extensions, recompute after import."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from layers.workflow.calendar import SHANGHAI, WorkCalendar, parse_holiday_notice
from layers.workflow.deadlines import (
    DeadlineRuleError,
    DeadlineRules,
    ExtensionLimitError,
    NoApplicableRuleError,
    Unit,
    apply_extension,
    default_rules,
    due_for,
    recompute,
)
from layers.workflow.transitions import ExtensionLimit

CAL = WorkCalendar.from_chinesecalendar([2025, 2026])


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)  # type: ignore[arg-type,misc]  # literal y, m, d, h, mi


def utc_of(*args: int) -> datetime:
    return sh(*args).astimezone(UTC)


def test_12345_complaint_and_consultation_strictest_wins() -> None:
    start = sh(2026, 2, 13, 10, 0)
    d = due_for("conclude", "12345", "dust", None, "normal", start, CAL)
    assert (d.rule_id, d.due_at) == ("12345-complaint", utc_of(2026, 3, 10, 17, 30))
    # a consultation matches both the 13-wd complaint rule and the 3-wd consultation rule:
    # Feb 14 (swapped Sat), Feb 24, Feb 25
    d = due_for("conclude", "12345", "policy", "consultation", "normal", start, CAL)
    assert (d.rule_id, d.due_at) == ("12345-consultation", utc_of(2026, 2, 25, 17, 30))


def test_12345_emergency_same_day() -> None:
    d = due_for("conclude", "12345", "dust", None, "emergency", sh(2025, 9, 30, 20, 0), CAL)
    assert d.rule_id == "12345-emergency"
    assert d.due_at == datetime(2025, 9, 30, 16, 0, tzinfo=UTC)  # 24:00 Shanghai


def test_12369_regime() -> None:
    start = sh(2025, 9, 1, 9, 0)
    d = due_for("conclude", "12369", "dust", None, "normal", start, CAL)
    assert (d.rule_id, d.due_at) == ("12369-conclude", utc_of(2025, 10, 9, 17, 30))  # Oct 1 →
    d = due_for("accept", "12369", "dust", None, "normal", sh(2025, 9, 30, 9, 0), CAL)
    assert (d.rule_id, d.due_at) == ("12369-accept", utc_of(2025, 10, 10, 17, 30))


def test_xinfang_not_capped_by_fallbacks() -> None:
    start = sh(2025, 9, 16, 9, 0)
    d = due_for("accept", "xinfang", "dust", None, "normal", start, CAL)
    # +15 days = Oct 1 (holiday) → Oct 9; the 1-wd fallback does not apply
    assert (d.rule_id, d.due_at) == ("xinfang-accept", utc_of(2025, 10, 9, 17, 30))
    d = due_for("conclude", "xinfang", "dust", None, "normal", sh(2025, 3, 3, 9, 0), CAL)
    assert (d.rule_id, d.due_at) == ("xinfang-conclude", utc_of(2025, 5, 6, 17, 30))
    # Mar 3 + 60 = May 2, inside Labour Day (May 1–5) → Tue May 6


def test_fast_track_beats_regimes_and_fallbacks() -> None:
    start = sh(2025, 9, 30, 22, 0)
    d = due_for("sign", "12345", "hazardous_leak", "fast_track", "urgent", start, CAL)
    assert (d.rule_id, d.due_at) == ("fast-track-respond", utc_of(2025, 9, 30, 22, 5))
    d = due_for("on_site", "12369", "hazardous_leak", ["fast_track"], "urgent", start, CAL)
    assert (d.rule_id, d.due_at) == ("fast-track-on-site", utc_of(2025, 10, 1, 0, 0))
    assert d.provisional is False


def test_fallback_for_unlisted_channel_and_missing_rule() -> None:
    d = due_for("sign", "wechat", "dust", None, "normal", sh(2025, 9, 30, 9, 0), CAL)
    assert (d.rule_id, d.due_at) == ("default-sign", utc_of(2025, 10, 9, 17, 30))
    empty = DeadlineRules(())
    with pytest.raises(NoApplicableRuleError, match=r"'sign'.*'wechat'"):
        empty.due_for("sign", "wechat", "dust", None, "normal", sh(2025, 9, 30), CAL)


def test_rules_table_validation() -> None:
    row = {"rule_id": "r1", "channel": "*", "category": "*", "urgency": "*", "node": "sign",
           "amount": "1", "unit": "working_days"}
    assert DeadlineRules.from_rows([row]).rules[0].unit == Unit.WORKING_DAYS
    with pytest.raises(DeadlineRuleError, match="line 2, column 'unit': 'weeks'"):
        DeadlineRules.from_rows([{**row, "unit": "weeks"}])
    with pytest.raises(DeadlineRuleError, match="line 3: rule_id 'r1' repeated"):
        DeadlineRules.from_rows([row, row])
    with pytest.raises(DeadlineRuleError, match="column 'amount': '-2'"):
        DeadlineRules.from_rows([{**row, "amount": "-2"}])
    with pytest.raises(DeadlineRuleError, match="column 'urgency'"):
        DeadlineRules.from_rows([{**row, "urgency": "asap"}])


def test_extension_limits_for_xinfang() -> None:
    rules = default_rules()
    limit = rules.extension_limit("xinfang", "dust", None, "normal")
    assert limit == ExtensionLimit(max_count=1, max_days=30)
    assert rules.extension_limit("12345", "dust", None, "normal") is None
    d = due_for("conclude", "xinfang", "dust", None, "normal", sh(2025, 3, 3, 9, 0), CAL)
    ext = apply_extension(d, 30, CAL, limit=limit, requested_at=utc_of(2025, 5, 1, 9, 0))
    # May 6 + 30 days = Thu Jun 5, a working day
    assert ext.due_at == utc_of(2025, 6, 5, 17, 30)
    assert (ext.extensions, ext.extension_days) == (1, 30)
    with pytest.raises(ExtensionLimitError, match="allows 1"):
        apply_extension(ext, 5, CAL, limit=limit)
    with pytest.raises(ExtensionLimitError, match="at most 30"):
        apply_extension(d, 31, CAL, limit=limit)
    with pytest.raises(ExtensionLimitError, match="not before the deadline"):
        apply_extension(d, 10, CAL, limit=limit, requested_at=d.due_at)


def test_working_day_extension() -> None:
    d = due_for("conclude", "12345", "dust", None, "normal", sh(2026, 2, 13, 10, 0), CAL)
    ext = apply_extension(d, 5, CAL)  # Mar 10 + 5 wd = Mar 17
    assert ext.due_at == utc_of(2026, 3, 17, 17, 30)


def test_recompute_after_2027_notice() -> None:
    start = sh(2026, 12, 24, 10, 0)  # Thu
    d = due_for("conclude", "12345", "dust", None, "normal", start, CAL)
    # Dec 25, 28, 29, 30, 31, Jan 1 (plain Fri), 4, 5, 6, 7, 8, 11, 12
    assert (d.due_at, d.provisional) == (utc_of(2027, 1, 12, 17, 30), True)
    notice = parse_holiday_notice("date,kind,name\n2027-01-01,holiday,元旦\n", year=2027)
    cal = CAL.with_records(notice)
    again = recompute(d, cal)
    # Jan 1 off: the 13th working day moves to Jan 13
    assert (again.due_at, again.provisional) == (utc_of(2027, 1, 13, 17, 30), False)
    assert again.rule_id == d.rule_id and again.started_at == d.started_at
