"""Risk warnings on node clocks and the escalation ladder (催办 → 督办).

A node is ``green`` until ``yellow_share`` of its time has passed, ``yellow`` from then until its
due time, and ``red`` once overdue (strictly after the due time; exactly at the due time it is
still on time). An overdue node is urged ``urge_after_wd`` working days after its due time (0:
as soon as it is overdue) and put under supervision ``supervise_after_wd`` working days after the
urging threshold. :func:`escalation_step` returns only the steps not yet taken, so running a pass
twice, or two passes at once, proposes nothing new once the flags are stored (the database makes
the flag update conditional to settle the race).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import numpy as np

from layers.workflow.calendar import WorkCalendar, add_working_days


class WarningLevel(StrEnum):
    """Traffic-light state of a running node."""

    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


class Escalation(StrEnum):
    """Escalation steps; the values are the transition actions to apply (by role ``system``)."""

    URGE = "urge"
    SUPERVISE = "supervise"


class WarningError(ValueError):
    """Invalid warning or escalation parameters."""


def _aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise WarningError(f"{name!r} must be a timezone-aware datetime, got {value!r}")


def _check_share(yellow_share: float) -> None:
    if not 0.0 < yellow_share <= 1.0:
        raise WarningError(f"'yellow_share' must be in (0, 1], got {yellow_share!r}")


def level(
    started_at: datetime, due_at: datetime, now: datetime, yellow_share: float = 0.8
) -> WarningLevel:
    """Warning level of one node clock at ``now``.

    Parameters
    ----------
    started_at, due_at
        The node's start and due times (aware).
    now
        The time to judge at (aware).
    yellow_share
        Share of the node's time after which it turns yellow, in (0, 1].

    Returns
    -------
    WarningLevel
    """
    for name, v in (("started_at", started_at), ("due_at", due_at), ("now", now)):
        _aware(name, v)
    _check_share(yellow_share)
    if due_at < started_at:
        raise WarningError(
            f"'due_at' {due_at.isoformat()} is before 'started_at' {started_at.isoformat()}"
        )
    if now > due_at:
        return WarningLevel.RED
    total = (due_at - started_at).total_seconds()
    if total == 0 or (now - started_at).total_seconds() >= yellow_share * total:
        return WarningLevel.YELLOW
    return WarningLevel.GREEN


def levels(
    started_at: np.ndarray, due_at: np.ndarray, now: np.datetime64, yellow_share: float = 0.8
) -> np.ndarray:
    """Vectorised :func:`level` over ``datetime64`` arrays (all UTC); returns an array of str.

    Parameters
    ----------
    started_at, due_at
        ``datetime64`` arrays of equal length (UTC, naive as numpy requires).
    now
        ``datetime64`` scalar (UTC).
    yellow_share
        As in :func:`level`.

    Returns
    -------
    numpy.ndarray
        ``'green'``, ``'yellow'`` or ``'red'`` per clock.
    """
    _check_share(yellow_share)
    start = np.asarray(started_at, dtype="datetime64[s]").astype(np.int64)
    due = np.asarray(due_at, dtype="datetime64[s]").astype(np.int64)
    t = np.asarray(now, dtype="datetime64[s]").astype(np.int64)
    if start.shape != due.shape:
        raise WarningError(f"started_at {start.shape} and due_at {due.shape} differ in shape")
    total = due - start
    yellow = (t - start) >= yellow_share * total
    return np.where(
        t > due, WarningLevel.RED.value,
        np.where(yellow, WarningLevel.YELLOW.value, WarningLevel.GREEN.value),
    )


def escalation_step(
    due_at: datetime,
    now: datetime,
    *,
    cal: WorkCalendar,
    already_urged: bool = False,
    already_supervised: bool = False,
    urge_after_wd: int = 0,
    supervise_after_wd: int = 2,
) -> list[Escalation]:
    """The escalation steps now due for a node clock and not yet taken.

    Parameters
    ----------
    due_at
        The node's due time (aware).
    now
        The time of the escalation pass (aware).
    cal
        Working-day calendar.
    already_urged, already_supervised
        Flags stored on the node clock.
    urge_after_wd
        Working days after the due time before urging (0: as soon as overdue).
    supervise_after_wd
        Further working days after the urging threshold before supervision.

    Returns
    -------
    list of Escalation
        In order (``urge`` before ``supervise``); empty when nothing is due or all is done.
    """
    _aware("due_at", due_at)
    _aware("now", now)
    for name, v in (("urge_after_wd", urge_after_wd), ("supervise_after_wd", supervise_after_wd)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise WarningError(f"{name!r} must be a whole number ≥ 0, got {v!r}")
    if now <= due_at:
        return []
    urge_at = due_at if urge_after_wd == 0 else add_working_days(due_at, urge_after_wd, cal)[0]
    supervise_at = (
        urge_at if supervise_after_wd == 0
        else add_working_days(urge_at, supervise_after_wd, cal)[0]
    )
    steps = []
    if now > urge_at and not already_urged:
        steps.append(Escalation.URGE)
    if now > supervise_at and not already_supervised:
        steps.append(Escalation.SUPERVISE)
    return steps
