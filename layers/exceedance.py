"""Exceedance rules and the episode engine: pure functions over lists of readings.

No database here. :mod:`layers.monitoring` loads a :class:`RunState` per (point, pollutant,
CN), feeds it the new readings in DataTime order with :func:`evaluate`, stores the state back
and turns the :class:`EpisodeEvent` list into episodes and leads.

The rule, per point and pollutant (``limits`` of a monitoring point)::

    {"a34001": {"limit": 80, "unit": "ug/m3", "period": "minute", "consecutive": 3}}

* ``period`` picks the data the limit applies to: ``realtime`` → CN 2011, ``minute`` → 2051,
  ``hour`` → 2061, ``day`` → 2031.
* the compared value is ``field`` when the rule names one, else the converted (折算) value when
  the device sends it (``ZsRtd`` / ``ZsAvg``: flue-gas limits apply to converted
  concentrations), else ``Rtd`` / ``Avg`` (§7 of the HJ 212 notes).
* only readings valid for compliance count: flag N or no flag. F/M/S/D/C/B/P/T values (stopped,
  maintenance, set value, fault, calibration, comms failure, power, over range) are skipped:
  they neither extend nor break a run (§8).
* an episode opens at the ``consecutive``-th value in a row above the limit; it starts at the
  DataTime of the first of them. While it lasts, every value above the limit updates its
  maximum, count and last time. It closes at the ``consecutive``-th value in a row at or
  under the limit; it ends at the DataTime of the first of those.
* readings at or before the last DataTime already evaluated are ignored (late or replayed
  history cannot reopen the past).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from layers.errors import Invalid

__all__ = [
    "PERIOD_CN",
    "EpisodeEvent",
    "EventKind",
    "Period",
    "Rule",
    "RunState",
    "Sample",
    "evaluate",
    "parse_limits",
    "pick_value",
]


class Period(StrEnum):
    """Averaging period a limit applies to."""

    realtime = "realtime"
    minute = "minute"
    hour = "hour"
    day = "day"


#: HJ 212 command code carrying the data of each period (§6 of the notes).
PERIOD_CN: dict[Period, str] = {
    Period.realtime: "2011",
    Period.minute: "2051",
    Period.hour: "2061",
    Period.day: "2031",
}

#: Nominal length of one value of each period, in seconds (real-time: a 30 s interval).
PERIOD_SECONDS: dict[Period, float] = {
    Period.realtime: 30.0, Period.minute: 60.0, Period.hour: 3600.0, Period.day: 86400.0,
}


@dataclass(frozen=True, slots=True)
class Rule:
    """An emission limit for one pollutant of one point."""

    pollutant: str
    limit: float
    unit: str = ""
    period: Period = Period.hour
    consecutive: int = 1
    field: str | None = None

    @property
    def cn(self) -> str:
        """The command code whose readings this rule judges."""
        return PERIOD_CN[self.period]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"limit": self.limit, "unit": self.unit, "period": self.period.value,
                               "consecutive": self.consecutive}
        if self.field:
            out["field"] = self.field
        return out


def parse_limits(raw: Mapping[str, Any] | None, *, field_name: str = "limits") -> dict[str, Rule]:
    """Validate a point's limits (pollutant code → rule) and return :class:`Rule` objects.

    Parameters
    ----------
    raw
        ``{"w01018": {"limit": 100, "unit": "mg/L", "period": "hour", "consecutive": 2}}``;
        ``unit``, ``period`` (default ``hour``) and ``consecutive`` (default 1) are optional,
        ``field`` (``Avg``, ``ZsAvg``, ``Rtd`` ...) overrides the compared value.
    field_name
        Name used in error messages.

    Returns
    -------
    dict
        pollutant code → :class:`Rule`.

    Raises
    ------
    layers.errors.Invalid
        Naming the pollutant and the bad entry.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise Invalid(field_name, raw, 'an object such as {"a34001": {"limit": 80, "period": "minute"}}')
    rules: dict[str, Rule] = {}
    periods = [p.value for p in Period]
    for code, spec in raw.items():
        code = str(code).strip()
        if not code or len(code) > 40:
            raise Invalid(f"{field_name}.pollutant", code, "a factor code of 1-40 characters, e.g. a34001")
        if not isinstance(spec, Mapping):
            raise Invalid(f"{field_name}.{code}", spec, 'an object {"limit": ..., "period": ...}')
        try:
            limit = float(spec.get("limit"))  # type: ignore[arg-type]  # None handled below
        except (TypeError, ValueError):
            raise Invalid(f"{field_name}.{code}.limit", spec.get("limit"), "a number") from None
        if not math.isfinite(limit):
            raise Invalid(f"{field_name}.{code}.limit", spec.get("limit"), "a finite number")
        period = str(spec.get("period") or "hour").strip().lower()
        if period not in periods:
            raise Invalid(f"{field_name}.{code}.period", spec.get("period"), f"one of {', '.join(periods)}")
        try:
            raw_n = spec.get("consecutive")
            consecutive = 1 if raw_n is None or str(raw_n).strip() == "" else int(float(str(raw_n)))
        except (TypeError, ValueError):
            raise Invalid(f"{field_name}.{code}.consecutive", spec.get("consecutive"),
                          "a whole number from 1 to 1000") from None
        if not 1 <= consecutive <= 1000:
            raise Invalid(f"{field_name}.{code}.consecutive", consecutive, "a whole number from 1 to 1000")
        fld = spec.get("field")
        rules[code] = Rule(code, limit, str(spec.get("unit") or ""), Period(period), consecutive,
                           str(fld) if fld else None)
    return rules


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading as the engine sees it."""

    data_time: datetime
    fields: Mapping[str, float | None]
    flag: str | None = None


def pick_value(rule: Rule, fields: Mapping[str, float | None]) -> float | None:
    """The value ``rule`` compares: its ``field``, else Zs*, else Rtd/Avg (module docstring)."""
    if rule.field:
        return fields.get(rule.field)
    names = ("ZsRtd", "Rtd") if rule.period is Period.realtime else ("ZsAvg", "Avg")
    for name in names:
        v = fields.get(name)
        if v is not None:
            return v
    return None


def _valid(flag: str | None) -> bool:
    # Same rule as layers.hj212.Reading.valid_for_compliance: N or no flag only.
    return flag is None or flag == "N"


@dataclass(frozen=True, slots=True)
class RunState:
    """Where the count stands for one point, pollutant and CN."""

    over: int = 0
    under: int = 0
    run_start: datetime | None = None
    run_max: float | None = None
    last_data_time: datetime | None = None
    episode_open: bool = False
    episode_start: datetime | None = None
    episode_max: float | None = None
    episode_count: int = 0
    episode_last: datetime | None = None


class EventKind(StrEnum):
    opened = "opened"
    updated = "updated"
    closed = "closed"


@dataclass(frozen=True, slots=True)
class EpisodeEvent:
    """What happened to the episode while evaluating a batch.

    At most one event per episode and kind per batch: ``opened`` carries the figures at the end
    of the batch, ``updated`` the net effect of the batch, ``closed`` the end; a batch can close one episode and open
    the next, so several events may come back in time order.
    """

    kind: EventKind
    start: datetime
    max_value: float | None
    count: int
    last: datetime
    end: datetime | None = None


def evaluate(rule: Rule, state: RunState, samples: Sequence[Sample]) -> tuple[RunState, list[EpisodeEvent]]:
    """Run the episode logic over new samples.

    Parameters
    ----------
    rule
        The limit.
    state
        The state after the previous batch (``RunState()`` for a new point).
    samples
        New readings of this point, pollutant and CN, in any order (sorted here).

    Returns
    -------
    (RunState, list of EpisodeEvent)
        The new state and the events, in time order.
    """
    events: list[EpisodeEvent] = []
    s = state
    for sample in sorted(samples, key=lambda x: x.data_time):
        if s.last_data_time is not None and sample.data_time <= s.last_data_time:
            continue
        s = replace(s, last_data_time=sample.data_time)
        value = pick_value(rule, sample.fields)
        if value is None or not _valid(sample.flag):
            continue
        if value > rule.limit:
            run_start = s.run_start if s.over else sample.data_time
            run_max = value if s.run_max is None or not s.over else max(s.run_max, value)
            s = replace(s, over=s.over + 1, under=0, run_start=run_start, run_max=run_max)
            if s.episode_open:
                s = replace(s, episode_max=max(s.episode_max or value, value),
                            episode_count=s.episode_count + 1, episode_last=sample.data_time)
                _merge_update(events, s)
            elif s.over >= rule.consecutive:
                s = replace(s, episode_open=True, episode_start=s.run_start, episode_max=s.run_max,
                            episode_count=s.over, episode_last=sample.data_time)
                assert s.episode_start is not None
                events.append(EpisodeEvent(EventKind.opened, s.episode_start, s.episode_max,
                                           s.episode_count, sample.data_time))
        else:
            run_start = s.run_start if s.under else sample.data_time
            s = replace(s, under=s.under + 1, over=0, run_start=run_start, run_max=None)
            if s.episode_open and s.under >= rule.consecutive:
                assert s.episode_start is not None and s.episode_last is not None
                events.append(EpisodeEvent(EventKind.closed, s.episode_start, s.episode_max,
                                           s.episode_count, s.episode_last, end=s.run_start))
                s = replace(s, episode_open=False, episode_start=None, episode_max=None,
                            episode_count=0, episode_last=None)
    return s, events


def _merge_update(events: list[EpisodeEvent], s: RunState) -> None:
    assert s.episode_start is not None and s.episode_last is not None
    prev = events[-1] if events else None
    if prev is not None and prev.kind is not EventKind.closed and prev.start == s.episode_start:
        # Opened earlier in this batch: the lead is created with the final figures; updated
        # earlier: one update (and one audit event) per batch, not one per reading.
        events[-1] = replace(prev, max_value=s.episode_max, count=s.episode_count, last=s.episode_last)
    else:
        events.append(EpisodeEvent(EventKind.updated, s.episode_start, s.episode_max,
                                   s.episode_count, s.episode_last))
