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
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
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
    # The state is carried in locals and frozen into a RunState once at the end: every reading
    # of every point with a limit passes here, and a RunState copy per step cost more than the
    # logic itself.
    events: list[EpisodeEvent] = []
    over, under, run_start, run_max = state.over, state.under, state.run_start, state.run_max
    last = state.last_data_time
    ep_open, ep_start, ep_max = state.episode_open, state.episode_start, state.episode_max
    ep_count, ep_last = state.episode_count, state.episode_last
    limit, consecutive = rule.limit, rule.consecutive
    for sample in sorted(samples, key=_data_time):
        t = sample.data_time
        if last is not None and t <= last:
            continue
        last = t
        value = pick_value(rule, sample.fields)
        if value is None or not _valid(sample.flag):
            continue
        if value > limit:
            run_max = value if run_max is None or not over else max(run_max, value)
            run_start = run_start if over else t
            over, under = over + 1, 0
            if ep_open:
                ep_max = max(ep_max or value, value)
                ep_count += 1
                ep_last = t
                assert ep_start is not None
                _merge_update(events, ep_start, ep_max, ep_count, ep_last)
            elif over >= consecutive:
                assert run_start is not None  # set by the first value of the run
                ep_open, ep_start, ep_max, ep_count, ep_last = True, run_start, run_max, over, t
                events.append(EpisodeEvent(EventKind.opened, ep_start, ep_max, ep_count, t))
        else:
            run_start = run_start if under else t
            under, over, run_max = under + 1, 0, None
            if ep_open and under >= consecutive:
                assert ep_start is not None and ep_last is not None
                events.append(EpisodeEvent(EventKind.closed, ep_start, ep_max, ep_count, ep_last, end=run_start))
                ep_open, ep_start, ep_max, ep_count, ep_last = False, None, None, 0, None
    return RunState(over, under, run_start, run_max, last, ep_open, ep_start, ep_max, ep_count, ep_last), events


_data_time = attrgetter("data_time")


def _merge_update(events: list[EpisodeEvent], start: datetime, max_value: float | None, count: int,
                  last: datetime) -> None:
    prev = events[-1] if events else None
    if prev is not None and prev.kind is not EventKind.closed and prev.start == start:
        # Opened earlier in this batch: the lead is created with the final figures; updated
        # earlier: one update (and one audit event) per batch, not one per reading.
        events[-1] = EpisodeEvent(prev.kind, prev.start, max_value, count, last, prev.end)
    else:
        events.append(EpisodeEvent(EventKind.updated, start, max_value, count, last))
