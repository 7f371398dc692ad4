"""The Chinese working-day calendar as data, and deadline arithmetic on it.

Conventions (all tested in ``tests/layers/workflow/test_calendar.py``):

* Local time is Asia/Shanghai; inputs must be timezone-aware, outputs are UTC.
* **The day of receipt is not counted.** ``add_working_days(start, n)`` is due at the end of the
  *n*-th working day strictly after the local date of ``start``. A lead received on a Saturday or
  during a holiday therefore starts counting on the next working day (which is day 1), and so
  does one received at 20:00 on a Friday.
* **A day ends at 17:30** (:data:`END_OF_DAY`), the close of office hours: the Civil Code (art.
  203) ends a period at 24:00, or at the close of business where there are business hours.
* ``add_calendar_days(start, n)`` is due at 17:30 on the *n*-th day after the receipt date; if
  that day is not a working day the deadline rolls to the next working day (法定节假日顺延).
* ``end_of_same_day(start)`` is 24:00 local of the receipt day (emergencies run round the clock).
* ``add_working_hours(start, h)`` counts only office time, 08:30–17:30 on working days (no lunch
  break is modelled). Plain elapsed hours/minutes (the fast track) need no calendar.
* For a year the calendar holds no data for, working days are Monday–Friday and the result is
  flagged ``provisional``; it never raises for a date.

A holiday notice for a new year is a CSV file::

    # 国务院办公厅关于2027年部分节假日安排的通知
    # year: 2027
    date,kind,name
    2027-01-01,holiday,元旦
    2027-02-20,workday,春节

(or JSON ``{"year": 2027, "days": [{"date": ..., "kind": ..., "name": ...}]}``). ``holiday`` rows
are every day off of a holiday period, weekends inside it included; ``workday`` rows are the
swapped working weekend days (调休).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
START_OF_DAY = time(8, 30)
END_OF_DAY = time(17, 30)

_HOLIDAY_NAMES_ZH = {
    "New Year's Day": "元旦",
    "Spring Festival": "春节",
    "Tomb-sweeping Day": "清明节",
    "Labour Day": "劳动节",
    "Dragon Boat Festival": "端午节",
    "National Day": "国庆节",
    "Mid-autumn Festival": "中秋节",
    "Anti-Fascist 70th Day": "抗战胜利70周年纪念日",
}


class CalendarError(ValueError):
    """Calendar data cannot be built or is inconsistent."""


class NoticeError(CalendarError):
    """A holiday notice file is invalid; ``problems`` lists every bad row and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid holiday notice:\n  " + "\n  ".join(problems))
        self.problems = problems


class DayKind(StrEnum):
    """A calendar record is a day off (``holiday``) or a swapped working day (``workday``)."""

    HOLIDAY = "holiday"
    WORKDAY = "workday"


@dataclass(frozen=True)
class CalendarRecord:
    """One exception to the plain Monday–Friday week, as stored in the database."""

    year: int
    date: date
    kind: DayKind
    name: str = ""


@dataclass(frozen=True)
class WorkCalendar:
    """Official days off and swapped working days per known year.

    Build it with :meth:`from_chinesecalendar` or :meth:`from_records`; add a year with
    :meth:`with_records`. Instances are immutable, so a calendar can be shared between threads.
    """

    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()
    known_years: frozenset[int] = frozenset()
    names: Mapping[date, str] = field(default_factory=dict, compare=False)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_records(
        cls, records: Iterable[CalendarRecord], years: Iterable[int] = ()
    ) -> WorkCalendar:
        """Build a calendar from stored records.

        Parameters
        ----------
        records
            Holiday and swapped-workday records.
        years
            Extra years to declare known even without records (rare; a year always has holidays).

        Returns
        -------
        WorkCalendar
            Known years are those of the records plus ``years``.

        Raises
        ------
        CalendarError
            If a date is both a holiday and a workday, or a record's year is not its date's year.
        """
        hol: set[date] = set()
        work: set[date] = set()
        names: dict[date, str] = {}
        known = set(years)
        for r in records:
            if r.date.year != r.year:
                raise CalendarError(f"record {r}: date {r.date} is not in year {r.year}")
            kind = DayKind(r.kind)
            (hol if kind == DayKind.HOLIDAY else work).add(r.date)
            names[r.date] = r.name
            known.add(r.year)
        both = hol & work
        if both:
            raise CalendarError(f"dates both holiday and workday: {sorted(both)}")
        return cls(frozenset(hol), frozenset(work), frozenset(known), names)

    @classmethod
    def from_chinesecalendar(
        cls, years: Iterable[int] | None = None, *, skip_unknown: bool = False
    ) -> WorkCalendar:
        """Seed from the ``chinesecalendar`` package.

        Parameters
        ----------
        years
            Years to take; default every year the package knows.
        skip_unknown
            Leave out years the package does not know instead of raising.

        Returns
        -------
        WorkCalendar

        Raises
        ------
        CalendarError
            Naming the years the package has no data for (it raises ``NotImplementedError``).
        """
        return cls.from_records(chinesecalendar_records(years, skip_unknown=skip_unknown))

    def with_records(self, records: Iterable[CalendarRecord]) -> WorkCalendar:
        """A new calendar with the records' years replaced by ``records`` (an imported notice)."""
        records = list(records)
        years = {r.year for r in records}
        kept = [r for r in self.to_records() if r.year not in years]
        return WorkCalendar.from_records([*kept, *records], years=self.known_years | years)

    def to_records(self) -> list[CalendarRecord]:
        """All records, sorted by date (for seeding the database)."""
        out = [CalendarRecord(d.year, d, DayKind.HOLIDAY, self.names.get(d, ""))
               for d in self.holidays]
        out += [CalendarRecord(d.year, d, DayKind.WORKDAY, self.names.get(d, ""))
                for d in self.workdays]
        return sorted(out, key=lambda r: r.date)

    # -- queries ----------------------------------------------------------------------------

    def is_known(self, d: date) -> bool:
        """Whether the calendar has official data for ``d``'s year."""
        return d.year in self.known_years

    def is_workday(self, d: date) -> bool:
        """Whether ``d`` is a working day (plain Monday–Friday for unknown years)."""
        if d in self.holidays:
            return False
        if d in self.workdays:
            return True
        return d.weekday() < 5

    def next_workday(self, d: date) -> tuple[date, bool]:
        """The first working day strictly after ``d``, and whether an unknown year was crossed."""
        provisional = False
        while True:
            d += timedelta(days=1)
            provisional |= not self.is_known(d)
            if self.is_workday(d):
                return d, provisional


# ----------------------------------------------------------------------------- chinesecalendar


def chinesecalendar_records(
    years: Iterable[int] | None = None, *, skip_unknown: bool = False
) -> list[CalendarRecord]:
    """Records for ``years`` from the ``chinesecalendar`` package.

    See :meth:`WorkCalendar.from_chinesecalendar` for the parameters.
    """
    import chinese_calendar  # local: only seeding needs it

    all_days: dict[date, str] = {**chinese_calendar.holidays, **chinese_calendar.workdays}
    available = sorted({d.year for d in all_days})
    wanted = available if years is None else sorted(set(years))
    unknown = []
    for y in wanted:
        try:
            chinese_calendar.is_workday(date(y, 6, 1))
        except NotImplementedError:
            unknown.append(y)
    if unknown and not skip_unknown:
        raise CalendarError(
            f"chinesecalendar has no data for year(s) {unknown} (it knows {available[0]}–"
            f"{available[-1]}); import the State Council notice for them instead"
        )
    keep = set(wanted) - set(unknown)
    out = []
    for source, kind in ((chinese_calendar.holidays, DayKind.HOLIDAY),
                         (chinese_calendar.workdays, DayKind.WORKDAY)):
        for d, name in source.items():
            if d.year in keep:
                out.append(CalendarRecord(d.year, d, kind, _HOLIDAY_NAMES_ZH.get(name, name)))
    return sorted(out, key=lambda r: r.date)


# ------------------------------------------------------------------------------ notice parsing


_YEAR_LINE = re.compile(r"^#\s*year\s*[:=]\s*(\d{4})\s*$", re.IGNORECASE)


def parse_holiday_notice(
    text: str, *, fmt: str = "csv", year: int | None = None
) -> list[CalendarRecord]:
    """Parse and validate a State Council holiday notice entered as CSV or JSON.

    Parameters
    ----------
    text
        File content (format in the module docstring).
    fmt
        ``"csv"`` or ``"json"``.
    year
        The year, if not declared in the file; if both are given they must agree.

    Returns
    -------
    list of CalendarRecord

    Raises
    ------
    NoticeError
        Listing every problem: row (file line for CSV, 1-based entry for JSON), field, value.
    """
    if fmt not in ("csv", "json"):
        raise NoticeError([f"format {fmt!r} is not supported; use 'csv' or 'json'"])
    rows: list[tuple[str, Mapping[str, Any]]] = []
    declared: int | None = None
    if fmt == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NoticeError([f"not valid JSON: {exc}"]) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("days"), list):
            raise NoticeError(["JSON notice must be an object with a 'days' list"])
        if "year" in doc:
            declared = doc["year"]
            if isinstance(declared, bool) or not isinstance(declared, int):
                raise NoticeError([f"field 'year' must be a whole number, got {declared!r}"])
        rows = [(f"entry {i}", d if isinstance(d, dict) else {})
                for i, d in enumerate(doc["days"], start=1)]
    else:
        lines = text.splitlines()
        body: list[tuple[int, str]] = []
        for n, line in enumerate(lines, start=1):
            m = _YEAR_LINE.match(line.strip())
            if m:
                declared = int(m.group(1))
            elif line.strip() and not line.lstrip().startswith("#"):
                body.append((n, line))
        reader = csv.DictReader(io.StringIO("\n".join(line for _, line in body)))
        missing = {"date", "kind", "name"} - set(reader.fieldnames or ())
        if missing:
            raise NoticeError([f"CSV header must be 'date,kind,name'; missing {sorted(missing)}"])
        rows = [(f"line {body[i + 1][0]}", r) for i, r in enumerate(reader)]
    if declared is not None and year is not None and declared != year:
        raise NoticeError([f"the file declares year {declared} but {year} was given"])
    the_year = declared if declared is not None else year
    if the_year is None:
        raise NoticeError(["no year: add a '# year: YYYY' line (CSV) or a 'year' field (JSON)"])
    return _validate_rows(rows, the_year)


def _validate_rows(rows: list[tuple[str, Mapping[str, Any]]], year: int) -> list[CalendarRecord]:
    problems: list[str] = []
    records: list[CalendarRecord] = []
    seen: dict[date, str] = {}
    for where, row in rows:
        raw_date = str(row.get("date") or "").strip()
        raw_kind = str(row.get("kind") or "").strip()
        name = str(row.get("name") or "").strip()
        try:
            d = date.fromisoformat(raw_date)
        except ValueError:
            problems.append(f"{where}, field 'date': {raw_date!r} is not a date YYYY-MM-DD")
            continue
        ok = True
        if d.year != year:
            problems.append(f"{where}, field 'date': {d} is outside the declared year {year}")
            ok = False
        if d in seen:
            problems.append(f"{where}, field 'date': {d} is listed twice (also {seen[d]})")
            ok = False
        try:
            kind = DayKind(raw_kind)
        except ValueError:
            problems.append(
                f"{where}, field 'kind': {raw_kind!r} is not one of "
                f"{[k.value for k in DayKind]}"
            )
            continue
        if kind == DayKind.WORKDAY and d.weekday() < 5:
            problems.append(
                f"{where}, field 'date': swapped workday {d} is a {d.strftime('%A')}; "
                "only a Saturday or Sunday can be made a working day"
            )
            ok = False
        if kind == DayKind.HOLIDAY and not name:
            problems.append(f"{where}, field 'name': a holiday needs its name (e.g. 春节)")
            ok = False
        seen.setdefault(d, where)
        if ok:
            records.append(CalendarRecord(year, d, kind, name))
    by_name: dict[str, list[date]] = {}
    for r in records:
        if r.kind == DayKind.HOLIDAY:
            by_name.setdefault(r.name, []).append(r.date)
    for name, days in by_name.items():
        if all(d.weekday() >= 5 for d in days):
            problems.append(
                f"holiday {name!r}: all its days {sorted(map(str, days))} are weekends; a "
                "holiday period gives at least one weekday off — check the dates"
            )
    if not rows:
        problems.append("the notice lists no days")
    elif not by_name and not problems:
        problems.append("the notice lists no holiday")
    if problems:
        raise NoticeError(problems)
    return sorted(records, key=lambda r: r.date)


def load_holiday_notice(path: Path | str, *, year: int | None = None) -> list[CalendarRecord]:
    """Read and validate a notice file; the format follows the suffix (``.json`` or CSV)."""
    p = Path(path)
    fmt = "json" if p.suffix.lower() == ".json" else "csv"
    return parse_holiday_notice(p.read_text(encoding="utf-8-sig"), fmt=fmt, year=year)


# ------------------------------------------------------------------------------ date arithmetic


def _local(start: datetime, name: str = "start") -> datetime:
    if not isinstance(start, datetime) or start.tzinfo is None or start.utcoffset() is None:
        raise CalendarError(f"{name!r} must be a timezone-aware datetime, got {start!r}")
    return start.astimezone(SHANGHAI)


def _at(d: date, t: time) -> datetime:
    return datetime.combine(d, t, tzinfo=SHANGHAI).astimezone(UTC)


def _check_n(n: int, name: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise CalendarError(f"{name!r} must be a whole number ≥ 0, got {n!r}")


def add_working_days(start: datetime, n: int, cal: WorkCalendar) -> tuple[datetime, bool]:
    """Due time ``n`` working days after ``start``.

    Parameters
    ----------
    start
        Timezone-aware start (receipt) time.
    n
        Working days, ≥ 0. ``0`` means the end of the receipt day if it is a working day and
        17:30 has not passed, else the end of the next working day.
    cal
        The working-day calendar.

    Returns
    -------
    (datetime, bool)
        Due time in UTC (17:30 Shanghai) and whether any day counted lies in a year the calendar
        does not know (``provisional``).
    """
    _check_n(n)
    local = _local(start)
    d = local.date()
    provisional = not cal.is_known(d)
    if n == 0:
        if cal.is_workday(d) and local.time() <= END_OF_DAY:
            return _at(d, END_OF_DAY), provisional
        d, p = cal.next_workday(d)
        return _at(d, END_OF_DAY), provisional or p
    provisional = False  # the receipt day itself is not counted
    for _ in range(n):
        d, p = cal.next_workday(d)
        provisional |= p
    return _at(d, END_OF_DAY), provisional


def add_calendar_days(start: datetime, n: int, cal: WorkCalendar) -> tuple[datetime, bool]:
    """Due time ``n`` calendar days after ``start``, rolled to a working day (顺延).

    Returns
    -------
    (datetime, bool)
        17:30 Shanghai (as UTC) on day ``n`` after the receipt date, or on the next working day
        if that day is not one; ``provisional`` when the final day's year is unknown.
    """
    _check_n(n)
    d = _local(start).date() + timedelta(days=n)
    provisional = not cal.is_known(d)
    if not cal.is_workday(d):
        d, p = cal.next_workday(d)
        provisional |= p
    return _at(d, END_OF_DAY), provisional


def end_of_same_day(start: datetime) -> datetime:
    """24:00 Shanghai of the receipt day, in UTC (the 12345 'same day' for emergencies)."""
    d = _local(start).date() + timedelta(days=1)
    return datetime.combine(d, time(0, 0), tzinfo=SHANGHAI).astimezone(UTC)


def add_working_hours(start: datetime, hours: float, cal: WorkCalendar) -> tuple[datetime, bool]:
    """Due time after ``hours`` of office time (08:30–17:30 on working days).

    Time before 08:30 counts from 08:30; time after 17:30 or on a day off counts from 08:30 of
    the next working day.
    """
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not hours >= 0:
        raise CalendarError(f"'hours' must be a number ≥ 0, got {hours!r}")
    local = _local(start)
    d = local.date()
    provisional = not cal.is_known(d)
    remaining = round(hours * 3600)
    if cal.is_workday(d) and local.time() < END_OF_DAY:
        cursor = max(local.replace(tzinfo=None), datetime.combine(d, START_OF_DAY))
    else:
        d, p = cal.next_workday(d)
        provisional |= p
        cursor = datetime.combine(d, START_OF_DAY)
    while True:
        left_today = (datetime.combine(d, END_OF_DAY) - cursor).total_seconds()
        if remaining <= left_today:
            due = cursor + timedelta(seconds=remaining)
            return due.replace(tzinfo=SHANGHAI).astimezone(UTC), provisional
        remaining -= int(left_today)
        d, p = cal.next_workday(d)
        provisional |= p
        cursor = datetime.combine(d, START_OF_DAY)


def add_elapsed(start: datetime, *, hours: float = 0, minutes: float = 0) -> datetime:
    """Round-the-clock elapsed time (the fast track); never provisional."""
    return _local(start).astimezone(UTC) + timedelta(hours=hours, minutes=minutes)
