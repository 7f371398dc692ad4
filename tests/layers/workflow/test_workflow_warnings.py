"""Warning levels and escalation timing with an injected clock; idempotent passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from layers.workflow.calendar import SHANGHAI, WorkCalendar
from layers.workflow.states import Node, Role, State
from layers.workflow.transitions import Actor, CaseView, ClockOp, NodeClock, apply
from layers.workflow.warnings import (
    Escalation,
    WarningError,
    WarningLevel,
    escalation_step,
    level,
    levels,
)

CAL = WorkCalendar.from_chinesecalendar([2025])
T0 = datetime(2025, 6, 2, 0, 0, tzinfo=UTC)
DUE = T0 + timedelta(hours=10)


def test_levels_at_the_boundaries() -> None:
    assert level(T0, DUE, T0 + timedelta(hours=7, minutes=59)) == WarningLevel.GREEN
    assert level(T0, DUE, T0 + timedelta(hours=8)) == WarningLevel.YELLOW  # exactly 80 %
    assert level(T0, DUE, DUE) == WarningLevel.YELLOW  # at the due time: not yet overdue
    assert level(T0, DUE, DUE + timedelta(seconds=1)) == WarningLevel.RED
    assert level(T0, DUE, T0 + timedelta(hours=5), yellow_share=0.5) == WarningLevel.YELLOW
    with pytest.raises(WarningError, match="yellow_share"):
        level(T0, DUE, T0, yellow_share=1.5)
    with pytest.raises(WarningError, match="timezone-aware"):
        level(T0, DUE, datetime(2025, 6, 2))


def test_vectorised_levels_agree() -> None:
    start = np.array(["2025-06-02T00:00"] * 3, dtype="datetime64[s]")
    due = np.array(["2025-06-02T10:00", "2025-06-02T09:00", "2025-06-02T20:00"],
                   dtype="datetime64[s]")
    out = levels(start, due, np.datetime64("2025-06-02T09:30"))
    assert out.tolist() == ["yellow", "red", "green"]


DUE_NATIONAL = datetime(2025, 9, 30, 17, 30, tzinfo=SHANGHAI)


def test_escalation_timing() -> None:
    step = escalation_step
    assert step(DUE_NATIONAL, DUE_NATIONAL - timedelta(minutes=1), cal=CAL) == []
    assert step(DUE_NATIONAL, DUE_NATIONAL, cal=CAL) == []
    assert step(DUE_NATIONAL, DUE_NATIONAL + timedelta(minutes=1), cal=CAL) == [Escalation.URGE]
    # supervision 2 working days after urging: Oct 9, Oct 10 → after Oct 10 17:30
    before = datetime(2025, 10, 10, 17, 0, tzinfo=SHANGHAI)
    after = datetime(2025, 10, 10, 17, 31, tzinfo=SHANGHAI)
    assert step(DUE_NATIONAL, before, cal=CAL, already_urged=True) == []
    assert step(DUE_NATIONAL, after, cal=CAL) == [Escalation.URGE, Escalation.SUPERVISE]
    assert step(DUE_NATIONAL, after, cal=CAL, already_urged=True) == [Escalation.SUPERVISE]
    assert step(DUE_NATIONAL, after, cal=CAL, already_urged=True, already_supervised=True) == []
    # urge only the working day after the deadline: nothing during the holiday
    holiday = datetime(2025, 10, 8, 12, 0, tzinfo=SHANGHAI)
    assert step(DUE_NATIONAL, holiday, cal=CAL, urge_after_wd=1) == []
    assert step(DUE_NATIONAL, datetime(2025, 10, 9, 17, 31, tzinfo=SHANGHAI), cal=CAL,
                urge_after_wd=1) == [Escalation.URGE]
    with pytest.raises(WarningError, match="supervise_after_wd"):
        step(DUE_NATIONAL, after, cal=CAL, supervise_after_wd=-1)


def test_escalation_pass_is_idempotent() -> None:
    """Run the pass twice: the second proposes nothing once the flags are stored."""
    system = Actor("escalator", frozenset({Role.SYSTEM}))
    clock = NodeClock(Node.HANDLE, DUE_NATIONAL - timedelta(days=3), DUE_NATIONAL)
    case = CaseView(id="c1", state=State.IN_PROGRESS, county_code="320311", body="sthjj",
                    clocks=(clock,))
    now = datetime(2025, 10, 13, 9, 0, tzinfo=SHANGHAI)

    def one_pass(c: CaseView) -> tuple[CaseView, list[str]]:
        done = []
        for action in escalation_step(clock.due_at or now, now, cal=CAL,
                                      already_urged=c.clocks[0].urged,
                                      already_supervised=c.clocks[0].supervised):
            res = apply(c, action.value, system, {}, now)
            (effect,) = res.clocks
            flags = {"urged": True} if effect.op == ClockOp.URGE else {"supervised": True}
            new_clock = NodeClock(**{**c.clocks[0].__dict__, **flags})
            c = CaseView(**{**c.__dict__, "clocks": (new_clock,),
                            "version": res.changes["version"]})
            done.append(action.value)
        return c, done

    case, first = one_pass(case)
    assert first == ["urge", "supervise"]
    case, second = one_pass(case)
    assert second == [] and case.version == 2
