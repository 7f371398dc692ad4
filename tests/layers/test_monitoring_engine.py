"""The pure exceedance engine and limit parsing: lists of readings in, episode events out."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.errors import Invalid
from layers.exceedance import (
    EpisodeEvent,
    EventKind,
    Period,
    Rule,
    RunState,
    Sample,
    evaluate,
    parse_limits,
    pick_value,
)

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
RULE = Rule("a34001", limit=100.0, unit="ug/m3", period=Period.minute, consecutive=3)


def series(values: list[float | None], flags: list[str | None] | None = None, start: int = 0) -> list[Sample]:
    flags = flags or [None] * len(values)
    return [Sample(T0 + timedelta(minutes=start + i), {"Avg": v}, f)
            for i, (v, f) in enumerate(zip(values, flags, strict=True))]


def test_opens_after_consecutive_values_and_starts_at_the_first() -> None:
    state, events = evaluate(RULE, RunState(), series([120, 130]))
    assert events == [] and state.over == 2
    state, events = evaluate(RULE, state, series([110], start=2))
    assert [e.kind for e in events] == [EventKind.opened]
    assert events[0].start == T0 and events[0].max_value == 130 and events[0].count == 3
    assert events[0].last == T0 + timedelta(minutes=2)


def test_updates_merge_per_batch_and_close_after_consecutive_values_under() -> None:
    state, events = evaluate(RULE, RunState(), series([120, 130, 110]))
    state, events = evaluate(RULE, state, series([150, 140], start=3))
    assert [e.kind for e in events] == [EventKind.updated]
    assert events[0].max_value == 150 and events[0].count == 5
    # Two under, one over (run broken, episode still open), then three under: close.
    state, events = evaluate(RULE, state, series([90, 80, 105, 50, 60, 70], start=5))
    kinds = [e.kind for e in events]
    assert kinds == [EventKind.updated, EventKind.closed]
    closed = events[-1]
    assert closed.end == T0 + timedelta(minutes=8)  # first of the three values under the limit
    assert closed.count == 6 and closed.max_value == 150
    assert not state.episode_open


def test_flagged_values_neither_count_nor_break_a_run() -> None:
    values = [120, 500, 130, 999, 140]
    flags: list[str | None] = ["N", "M", "N", "C", "N"]
    _, events = evaluate(RULE, RunState(), series(values, flags))
    assert [e.kind for e in events] == [EventKind.opened]
    assert events[0].max_value == 140  # 500 (maintenance) and 999 (calibration) ignored
    for flag in ("F", "M", "S", "D", "C", "B", "P", "T"):
        _, events = evaluate(RULE, RunState(), series([500.0] * 5, [flag] * 5))
        assert events == [], flag


def test_late_or_replayed_readings_are_ignored() -> None:
    state, _ = evaluate(RULE, RunState(), series([120, 130, 140]))
    again, events = evaluate(RULE, state, series([120, 130, 140]))
    assert events == [] and again == state


def test_open_and_close_in_one_batch_then_a_new_episode() -> None:
    _, events = evaluate(RULE, RunState(), series([120, 130, 140, 10, 20, 30, 200, 210, 220]))
    assert [e.kind for e in events] == [EventKind.opened, EventKind.closed, EventKind.opened]
    assert events[2].start == T0 + timedelta(minutes=6)


def test_unsorted_input_is_sorted() -> None:
    samples = series([120, 130, 140])
    _, events = evaluate(RULE, RunState(), list(reversed(samples)))
    assert events[0].start == T0


def test_value_choice_prefers_converted_concentration() -> None:
    assert pick_value(RULE, {"Avg": 90.0, "ZsAvg": 120.0}) == 120.0
    assert pick_value(RULE, {"Avg": 90.0}) == 90.0
    rt = Rule("a21026", 35, period=Period.realtime)
    assert pick_value(rt, {"Rtd": 40.0}) == 40.0
    assert pick_value(Rule("x", 1, field="Max"), {"Avg": 0.5, "Max": 2.0}) == 2.0


def test_parse_limits_and_its_errors() -> None:
    rules = parse_limits({"w01018": {"limit": "100", "unit": "mg/L", "period": "hour", "consecutive": 2}})
    assert rules["w01018"] == Rule("w01018", 100.0, "mg/L", Period.hour, 2)
    assert rules["w01018"].cn == "2061"
    with pytest.raises(Invalid, match=r"limits\.w01018\.period"):
        parse_limits({"w01018": {"limit": 1, "period": "week"}})
    with pytest.raises(Invalid, match=r"limits\.a\.limit"):
        parse_limits({"a": {"limit": "lots"}})
    with pytest.raises(Invalid, match="consecutive"):
        parse_limits({"a": {"limit": 1, "consecutive": 0}})


@given(
    values=st.lists(st.one_of(st.none(), st.sampled_from([0.0, 50.0, 100.0, 100.5, 300.0])), max_size=40),
    flags=st.lists(st.sampled_from([None, "N", "N", "D", "T"]), min_size=40, max_size=40),
    cuts=st.sets(st.integers(min_value=1, max_value=39), max_size=6),
    consecutive=st.integers(min_value=1, max_value=4),
)
@settings(max_examples=300, deadline=None)
def test_batching_changes_neither_the_state_nor_the_episodes(
    values: list[float | None], flags: list[str | None], cuts: set[int], consecutive: int
) -> None:
    # The receiver cuts the stream into batches wherever its commits fall: the state reached and
    # the episodes opened and closed must not depend on where.
    rule = Rule("a34001", limit=100.0, period=Period.minute, consecutive=consecutive)
    samples = series(values, flags[: len(values)])
    whole_state, whole_events = evaluate(rule, RunState(), samples)
    state, events = RunState(), []
    bounds = [0, *sorted(c for c in cuts if c < len(samples)), len(samples)]
    for a, b in itertools.pairwise(bounds):
        state, batch_events = evaluate(rule, state, samples[a:b])
        events += batch_events
    assert state == whole_state

    def episodes(evs: list[EpisodeEvent]) -> list[tuple[Any, ...]]:
        # Per episode: its start and, once closed, its end and figures.
        out: dict[datetime, tuple[Any, ...]] = {}
        for e in evs:
            out[e.start] = (e.start, e.end, e.max_value, e.count, e.last) if e.kind is EventKind.closed else (e.start,)
        return list(out.values())

    assert episodes(events) == episodes(whole_events)
    if whole_state.episode_open:  # the open one carries the same running figures either way
        last = events[-1]
        assert (last.start, last.max_value, last.count, last.last) == (
            whole_state.episode_start, whole_state.episode_max, whole_state.episode_count,
            whole_state.episode_last)
