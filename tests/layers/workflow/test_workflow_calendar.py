"""Working-day arithmetic across the 2025–2026 holidays, swapped weekends and into 2027."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import chinese_calendar
import pytest

from layers.workflow.calendar import (
    SHANGHAI,
    CalendarError,
    CalendarRecord,
    DayKind,
    NoticeError,
    WorkCalendar,
    add_calendar_days,
    add_working_days,
    add_working_hours,
    end_of_same_day,
    load_holiday_notice,
    parse_holiday_notice,
)

CAL = WorkCalendar.from_chinesecalendar([2024, 2025, 2026])


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)  # type: ignore[arg-type,misc]  # literal y, m, d, h, mi


def utc_of(*args: int) -> datetime:
    return sh(*args).astimezone(UTC)


# A fictitious 2027 notice for tests only — NOT the State Council's (not yet published here).
NOTICE_2027 = """\
# test fixture, not the official 2027 notice
# year: 2027
date,kind,name
2027-01-01,holiday,元旦
2027-01-02,holiday,元旦
2027-01-03,holiday,元旦
2027-02-06,holiday,春节
2027-02-07,holiday,春节
2027-02-08,holiday,春节
2027-02-20,workday,春节
"""


def test_chinesecalendar_stops_at_2026() -> None:
    with pytest.raises(NotImplementedError):
        chinese_calendar.is_workday(date(2027, 1, 4))
    with pytest.raises(CalendarError, match=r"\[2027\]"):
        WorkCalendar.from_chinesecalendar([2026, 2027])
    cal = WorkCalendar.from_chinesecalendar([2026, 2027], skip_unknown=True)
    assert cal.known_years == frozenset({2026})


def test_swapped_days_and_holidays() -> None:
    assert CAL.is_workday(date(2025, 9, 28))  # Sunday made a working day (国庆调休)
    assert CAL.is_workday(date(2025, 10, 11))  # Saturday made a working day
    assert not CAL.is_workday(date(2025, 10, 1))
    assert not CAL.is_workday(date(2025, 10, 8))
    assert CAL.is_workday(date(2026, 2, 14))  # Saturday before Spring Festival 2026
    assert not CAL.is_workday(date(2026, 2, 23))  # Monday inside Spring Festival 2026
    # unknown years: plain weekends, no crash
    assert CAL.is_workday(date(2099, 1, 1)) and not CAL.is_workday(date(2099, 1, 3))
    assert not CAL.is_known(date(2099, 1, 1))


def test_last_working_day_before_national_day_2025() -> None:
    start = sh(2025, 9, 30, 10, 0)
    # Oct 1–8 off; Oct 9 (Thu) is working day 1, Oct 10 (Fri) day 2, Oct 11 (swapped Sat) day 3
    assert add_working_days(start, 1, CAL) == (utc_of(2025, 10, 9, 17, 30), False)
    assert add_working_days(start, 2, CAL) == (utc_of(2025, 10, 10, 17, 30), False)
    assert add_working_days(start, 3, CAL) == (utc_of(2025, 10, 11, 17, 30), False)
    # output is UTC: 17:30 in Shanghai is 09:30 UTC
    assert add_working_days(start, 2, CAL)[0] == datetime(2025, 10, 10, 9, 30, tzinfo=UTC)


def test_received_on_swapped_working_sunday() -> None:
    start = sh(2025, 9, 28, 10, 0)  # a working Sunday: the receipt day itself is not counted
    assert add_working_days(start, 1, CAL)[0] == utc_of(2025, 9, 29, 17, 30)
    assert add_working_days(start, 2, CAL)[0] == utc_of(2025, 9, 30, 17, 30)
    assert add_working_days(start, 3, CAL)[0] == utc_of(2025, 10, 9, 17, 30)


def test_received_on_a_day_off_counts_from_next_working_day() -> None:
    # Saturday 2025-10-04, inside the holiday: Oct 9 is day 1
    assert add_working_days(sh(2025, 10, 4, 9, 0), 1, CAL)[0] == utc_of(2025, 10, 9, 17, 30)
    # Saturday 2025-09-27 (not swapped): the working Sunday after it is day 1
    assert add_working_days(sh(2025, 9, 27, 9, 0), 1, CAL)[0] == utc_of(2025, 9, 28, 17, 30)


def test_zero_working_days_is_same_working_day() -> None:
    assert add_working_days(sh(2025, 9, 30, 10, 0), 0, CAL)[0] == utc_of(2025, 9, 30, 17, 30)
    # after office hours it is the next working day
    assert add_working_days(sh(2025, 9, 30, 18, 0), 0, CAL)[0] == utc_of(2025, 10, 9, 17, 30)


def test_spring_festival_2026() -> None:
    start = sh(2026, 2, 13, 10, 0)  # Friday
    assert add_working_days(start, 1, CAL)[0] == utc_of(2026, 2, 14, 17, 30)  # swapped Sat
    assert add_working_days(start, 2, CAL)[0] == utc_of(2026, 2, 24, 17, 30)  # after Feb 15–23
    # 13 wd: Feb 14, 24, 25, 26, 27, 28 (swapped Sat), Mar 2, 3, 4, 5, 6, 9, 10
    assert add_working_days(start, 13, CAL)[0] == utc_of(2026, 3, 10, 17, 30)


def test_calendar_days_roll_to_next_working_day() -> None:
    # 2025-09-01 + 30 days = Oct 1, a holiday → rolls to Oct 9
    assert add_calendar_days(sh(2025, 9, 1, 9, 0), 30, CAL) == (utc_of(2025, 10, 9, 17, 30), False)
    # 2025-09-01 + 10 days = Thu Sep 11, a working day: no roll
    assert add_calendar_days(sh(2025, 9, 1, 9, 0), 10, CAL)[0] == utc_of(2025, 9, 11, 17, 30)


def test_same_day_and_working_hours() -> None:
    assert end_of_same_day(sh(2025, 9, 30, 20, 0)) == datetime(2025, 9, 30, 16, 0, tzinfo=UTC)
    # 16:30 + 2 office hours: 1 h on Sep 30, 1 h on Oct 9 → 09:30
    assert add_working_hours(sh(2025, 9, 30, 16, 30), 2, CAL)[0] == utc_of(2025, 10, 9, 9, 30)
    # before office hours counts from 08:30
    assert add_working_hours(sh(2025, 9, 29, 7, 0), 1, CAL)[0] == utc_of(2025, 9, 29, 9, 30)
    # a plain Saturday: starts 08:30 on the swapped Sunday
    assert add_working_hours(sh(2025, 9, 27, 10, 0), 1, CAL)[0] == utc_of(2025, 9, 28, 9, 30)


def test_into_2027_provisional_then_recomputed(tmp_path: Path) -> None:
    start = sh(2026, 12, 30, 10, 0)  # Wed
    # Dec 31 (day 1, known), Jan 1 2027 (plain Friday, day 2, unknown), Jan 4 (day 3)
    due, provisional = add_working_days(start, 3, CAL)
    assert (due, provisional) == (utc_of(2027, 1, 4, 17, 30), True)
    assert add_working_days(start, 1, CAL) == (utc_of(2026, 12, 31, 17, 30), False)
    path = tmp_path / "notice_2027.csv"
    path.write_text(NOTICE_2027, encoding="utf-8")
    cal = CAL.with_records(load_holiday_notice(path))
    assert 2027 in cal.known_years
    # with Jan 1–3 off: Dec 31, Jan 4, Jan 5
    assert add_working_days(start, 3, cal) == (utc_of(2027, 1, 5, 17, 30), False)
    assert cal.is_workday(date(2027, 2, 20))  # the swapped Saturday
    # the calendar round-trips through records (the database form)
    again = WorkCalendar.from_records(cal.to_records())
    assert again.known_years == cal.known_years and again.holidays == cal.holidays


def test_json_notice() -> None:
    text = ('{"year": 2027, "days": [{"date": "2027-01-01", "kind": "holiday", "name": "元旦"},'
            ' {"date": "2027-02-20", "kind": "workday", "name": "春节"}]}')
    records = parse_holiday_notice(text, fmt="json")
    assert records[0] == CalendarRecord(2027, date(2027, 1, 1), DayKind.HOLIDAY, "元旦")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("2026-12-31,holiday,元旦\n2027-01-01,holiday,元旦",
         "line 4, field 'date': 2026-12-31 is outside"),
        ("2027-01-01,holiday,元旦\n2027-01-01,holiday,元旦",
         "line 5, field 'date': 2027-01-01 is listed twice"),
        ("2027-01-01,day-off,元旦", "line 4, field 'kind': 'day-off'"),
        ("2027-01-01,holiday,元旦\n2027-01-04,workday,元旦",
         "line 5, field 'date': swapped workday 2027-01-04 is a Monday"),
        ("2027-01-02,holiday,元旦\n2027-01-03,holiday,元旦", "all its days"),
        ("2027-13-01,holiday,元旦", "line 4, field 'date': '2027-13-01'"),
        ("2027-01-01,holiday,", "line 4, field 'name'"),
    ],
)
def test_notice_errors_name_row_and_field(body: str, needle: str) -> None:
    text = "# year: 2027\ndate,kind,name\n" + body + "\n"
    # lines: 1 year, 2 header, 3 first row — shift by one with a leading comment line
    text = "# notice\n" + text
    with pytest.raises(NoticeError) as exc:
        parse_holiday_notice(text)
    assert needle in str(exc.value), str(exc.value)


def test_notice_year_must_be_declared_and_agree() -> None:
    with pytest.raises(NoticeError, match="no year"):
        parse_holiday_notice("date,kind,name\n2027-01-01,holiday,元旦\n")
    with pytest.raises(NoticeError, match="declares year 2027 but 2028"):
        parse_holiday_notice(NOTICE_2027, year=2028)
    assert parse_holiday_notice("date,kind,name\n2027-01-01,holiday,元旦\n", year=2027)


def test_naive_and_negative_inputs_are_refused() -> None:
    with pytest.raises(CalendarError, match="timezone-aware"):
        add_working_days(datetime(2025, 9, 30), 1, CAL)
    with pytest.raises(CalendarError, match="'n'"):
        add_working_days(sh(2025, 9, 30), -1, CAL)
    # far-future date: provisional, never a crash
    assert add_working_days(sh(2080, 5, 1), 2, CAL)[1] is True
