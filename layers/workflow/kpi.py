"""Pure KPI computation over case summaries and workflow events (pandas in, pandas out).

Inputs
------
``cases`` — one row per case:

=================  ==========================================================================
case_id            id
body               responsible body (the current one)
county_code,       jurisdiction codes (any column can be used to group)
township_code
category           category code
state              a :class:`~layers.workflow.states.State` value
created_at         intake time (aware or UTC)
sign_due_at        due time of the first ``sign`` node (NaT if never dispatched)
conclude_due_at    final due time of the ``conclude`` clock, extensions included (NaT if none)
closed_at          closure time (NaT while open)
satisfaction       return-visit answer or missing
x, y               optional: position in a metric CRS (metres) — for repeat complaints
address            optional: address text — for repeat complaints
=================  ==========================================================================

``events`` — one row per workflow event: ``case_id, action, at`` and optionally ``body`` (the body
the case was with when the event happened; used to attribute returns and dispatches per body).

Definitions (numerator / denominator; merged cases are left out everywhere — they live on in
their parent):

* 及时签收率 ``signed_in_time``: cases first signed at or before ``sign_due_at`` / cases signed,
  plus unsigned cases whose ``sign_due_at`` has passed at ``as_of``.
* 按期办结率 ``closed_on_time``: cases closed at or before ``conclude_due_at`` / cases closed plus
  open cases whose ``conclude_due_at`` has passed (open overdue backlog counts against the rate).
* 结案率 ``closure``: closed cases / cases.
* 返工率 ``rework``: cases with at least one ``verify_fail`` / cases verified at least once.
* 退单率 ``return``: ``return`` events / dispatches (``dispatch`` and ``reopen_redispatch``
  events), attributed to the event's ``body`` when grouping by body and events carry one.
* 延期率 ``extension``: cases with an approved extension / cases dispatched at least once.
* 满意度 ``satisfaction``: answers ``satisfied`` or ``basically_satisfied`` / answers given
  (``not_reached`` is not an answer).
* 重复投诉率 ``repeat``: closed cases followed, within ``repeat_window_days`` after closure, by a
  new case of the same category at the **same place** / closed cases. Same place means the same
  township and either within ``repeat_radius_m`` metres (columns ``x, y``) or the same address
  after normalisation (whitespace removed, case folded).

Time per node (:func:`time_per_node`): each state-changing event starts the node named in the
transitions table; the node lasts until the case's next state-changing event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from layers.workflow.states import SATISFIED_ANSWERS, Action, Satisfaction, State
from layers.workflow.transitions import TransitionTable, default_table

KPI_NAMES: dict[str, str] = {
    "signed_in_time": "及时签收率",
    "closed_on_time": "按期办结率",
    "closure": "结案率",
    "rework": "返工率",
    "return": "退单率",
    "extension": "延期率",
    "satisfaction": "满意度",
    "repeat": "重复投诉率",
}
#: KPIs where a lower value is better (ranked ascending).
LOWER_IS_BETTER: frozenset[str] = frozenset({"rework", "return", "extension", "repeat"})

REQUIRED_CASE_COLUMNS = (
    "case_id", "body", "category", "state", "created_at", "sign_due_at", "conclude_due_at",
    "closed_at", "satisfaction",
)
REQUIRED_EVENT_COLUMNS = ("case_id", "action", "at")
_DISPATCH_ACTIONS = (Action.DISPATCH.value, Action.REOPEN_REDISPATCH.value)


class KpiInputError(ValueError):
    """A KPI input frame lacks columns or has bad values."""


def _require(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KpiInputError(f"{name} lacks column(s) {missing}; it has {list(df.columns)}")


def _utc(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, utc=True)


def case_flags(
    cases: pd.DataFrame,
    events: pd.DataFrame,
    as_of: datetime,
    *,
    repeat_radius_m: float = 100.0,
    repeat_window_days: float = 90.0,
) -> pd.DataFrame:
    """Per-case numerator/denominator flags of every KPI (merged cases dropped).

    Parameters
    ----------
    cases, events
        See the module docstring.
    as_of
        Aware time at which open cases are judged overdue.
    repeat_radius_m, repeat_window_days
        The "same place" radius and the window after closure for repeat complaints.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``case_id``; the case columns plus ``<kpi>_num`` and ``<kpi>_den`` (ints).
    """
    _require(cases, REQUIRED_CASE_COLUMNS, "cases")
    _require(events, REQUIRED_EVENT_COLUMNS, "events")
    if as_of.tzinfo is None:
        raise KpiInputError(f"'as_of' must be timezone-aware, got {as_of!r}")
    t = pd.Timestamp(as_of).tz_convert("UTC")
    c = cases.loc[cases["state"] != State.MERGED.value].copy()
    for col in ("created_at", "sign_due_at", "conclude_due_at", "closed_at"):
        c[col] = _utc(c[col])
    c = c.set_index("case_id", drop=False)
    ev = events.loc[events["case_id"].isin(c.index)].copy()
    ev["at"] = _utc(ev["at"])
    counts = ev.groupby(["case_id", "action"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=c.index, fill_value=0)

    def n(action: str) -> pd.Series:
        if action in counts.columns:
            return counts[action].astype(int)
        return pd.Series(0, index=c.index)

    first_sign = ev.loc[ev["action"] == Action.SIGN.value].groupby("case_id")["at"].min()
    signed_at = first_sign.reindex(c.index)
    signed = signed_at.notna()
    c["signed_in_time_num"] = (signed & (signed_at <= c["sign_due_at"])).astype(int)
    c["signed_in_time_den"] = (signed | (c["sign_due_at"] < t)).astype(int)

    closed = c["state"].eq(State.CLOSED.value) & c["closed_at"].notna()
    open_overdue = ~closed & (c["conclude_due_at"] < t)
    c["closed_on_time_num"] = (closed & (c["closed_at"] <= c["conclude_due_at"])).astype(int)
    c["closed_on_time_den"] = (closed | open_overdue).astype(int)

    c["closure_num"] = closed.astype(int)
    c["closure_den"] = 1

    fails = n(Action.VERIFY_FAIL.value)
    c["rework_num"] = (fails > 0).astype(int)
    c["rework_den"] = ((fails + n(Action.VERIFY_PASS.value)) > 0).astype(int)

    dispatches = sum(n(a) for a in _DISPATCH_ACTIONS)
    c["return_num"] = n(Action.RETURN.value)
    c["return_den"] = dispatches

    c["extension_num"] = (n(Action.EXTENSION_APPROVE.value) > 0).astype(int)
    c["extension_den"] = (dispatches > 0).astype(int)

    answered = c["satisfaction"].notna() & c["satisfaction"].ne(Satisfaction.NOT_REACHED.value)
    c["satisfaction_num"] = c["satisfaction"].isin([s.value for s in SATISFIED_ANSWERS]).astype(int)
    c["satisfaction_den"] = answered.astype(int)

    c["repeat_num"] = _repeated(c, closed, repeat_radius_m, repeat_window_days).astype(int)
    c["repeat_den"] = closed.astype(int)
    return c


def _norm_address(s: pd.Series) -> pd.Series:
    return s.astype("string").str.replace(r"\s+", "", regex=True).str.casefold()


def _repeated(
    c: pd.DataFrame, closed: pd.Series, radius_m: float, window_days: float
) -> pd.Series:
    """True for closed cases followed by a same-place, same-category case within the window."""
    out = np.zeros(len(c), dtype=bool)
    if "township_code" not in c.columns or not closed.any():
        return pd.Series(out, index=c.index)
    # Work on integer positions and int64 nanoseconds: comparing string ids over millions of
    # candidate pairs is what makes the naive version slow.
    key = pd.MultiIndex.from_arrays([c["township_code"], c["category"]]).factorize()[0]
    created = c["created_at"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    closed_ns = c["closed_at"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    pos = np.arange(len(c))
    is_closed = closed.to_numpy()
    base = pd.DataFrame({"key": key[is_closed], "i": pos[is_closed]})
    later = pd.DataFrame({"key": key, "j": pos})
    # Candidate pairs share township and category; such groups are small (one township, one
    # category), so the merge stays proportional to the data, and every test below is a
    # vectorised numpy expression over the pairs.
    pairs = base.merge(later, on="key")
    i = pairs["i"].to_numpy()
    j = pairs["j"].to_numpy()
    window = int(pd.Timedelta(days=window_days).value)
    keep = (i != j) & (created[j] > closed_ns[i]) & (created[j] <= closed_ns[i] + window)
    i, j = i[keep], j[keep]
    if i.size == 0:
        return pd.Series(out, index=c.index)
    same = np.zeros(i.size, dtype=bool)
    if {"x", "y"} <= set(c.columns):
        x = c["x"].to_numpy(dtype=float)
        y = c["y"].to_numpy(dtype=float)
        same |= np.hypot(x[i] - x[j], y[i] - y[j]) <= radius_m
    if "address" in c.columns:
        codes = _norm_address(c["address"]).factorize()[0]  # -1 for a missing address
        same |= (codes[i] >= 0) & (codes[i] == codes[j])
    out[i[same]] = True
    return pd.Series(out, index=c.index)


def kpi_table(
    cases: pd.DataFrame,
    events: pd.DataFrame,
    as_of: datetime,
    *,
    by: str | Sequence[str] | None = None,
    repeat_radius_m: float = 100.0,
    repeat_window_days: float = 90.0,
) -> pd.DataFrame:
    """KPIs per group (or overall) with numerators, denominators and rates.

    Parameters
    ----------
    cases, events, as_of, repeat_radius_m, repeat_window_days
        As in :func:`case_flags`.
    by
        Case column(s) to group by, e.g. ``"body"``, ``"county_code"``; ``None`` for one row.

    Returns
    -------
    pandas.DataFrame
        One row per group: ``cases`` plus ``<kpi>_num``, ``<kpi>_den`` and ``<kpi>`` (the rate,
        NaN when the denominator is 0) for each KPI in :data:`KPI_NAMES`.
    """
    flags = case_flags(
        cases, events, as_of, repeat_radius_m=repeat_radius_m,
        repeat_window_days=repeat_window_days,
    )
    cols = [f"{k}_{p}" for k in KPI_NAMES for p in ("num", "den")]
    keys = [by] if isinstance(by, str) else list(by or [])
    if keys:
        _require(flags, keys, "cases")
        table = flags.groupby(keys)[cols].sum()
        table.insert(0, "cases", flags.groupby(keys).size())
    else:
        table = flags[cols].sum().to_frame().T
        table.insert(0, "cases", len(flags))
        table.index = pd.Index(["all"], name="group")
    if keys == ["body"] and "body" in events.columns:
        # Returns and dispatches belong to the body that had the case at the time.
        ev = events.loc[events["case_id"].isin(flags.index)]
        ret = ev.loc[ev["action"] == Action.RETURN.value].groupby("body").size()
        dis = ev.loc[ev["action"].isin(_DISPATCH_ACTIONS)].groupby("body").size()
        idx = table.index.union(ret.index).union(dis.index)
        table = table.reindex(idx, fill_value=0)
        table["return_num"] = ret.reindex(idx, fill_value=0)
        table["return_den"] = dis.reindex(idx, fill_value=0)
    for k in KPI_NAMES:
        den = table[f"{k}_den"].astype(float)
        table[k] = np.where(den > 0, table[f"{k}_num"] / den.where(den > 0, 1), np.nan)
    return table


def rank(table: pd.DataFrame, kpi: str) -> pd.Series:
    """Rank groups on ``kpi`` (1 = best; ties share the best rank; NaN rates rank last).

    Lower is better for the KPIs in :data:`LOWER_IS_BETTER`, higher for the others.
    """
    if kpi not in KPI_NAMES:
        raise KpiInputError(f"unknown KPI {kpi!r}; known are {list(KPI_NAMES)}")
    return table[kpi].rank(
        ascending=kpi in LOWER_IS_BETTER, method="min", na_option="bottom"
    ).astype(int)


def time_per_node(
    cases: pd.DataFrame,
    events: pd.DataFrame,
    *,
    by: str | None = None,
    table: TransitionTable | None = None,
) -> pd.DataFrame:
    """Hours spent in each node (mean, median, count), overall or per case column ``by``.

    Nodes still running have no end and are left out.
    """
    _require(events, REQUIRED_EVENT_COLUMNS, "events")
    tt = table or default_table()
    starts: dict[str, str] = {Action.RECEIVE.value: "accept"}
    changing = {Action.RECEIVE.value}
    for r in tt.rules:
        if r.to_state is not None:
            changing.add(r.action.value)
            step = [n.value for n in r.nodes if n.value != "conclude"]
            if step:
                starts.setdefault(r.action.value, step[0])
    ev = events.loc[events["action"].isin(changing), ["case_id", "action", "at"]].copy()
    ev["at"] = _utc(ev["at"])
    ev = ev.sort_values(["case_id", "at"], kind="stable")
    ev["end"] = ev.groupby("case_id")["at"].shift(-1)
    ev["node"] = ev["action"].map(starts)
    ev = ev.loc[ev["node"].notna() & ev["end"].notna()]
    ev["hours"] = (ev["end"] - ev["at"]).dt.total_seconds() / 3600.0
    keys = ["node"]
    if by is not None:
        _require(cases, ["case_id", by], "cases")
        ev = ev.merge(cases[["case_id", by]], on="case_id", how="left")
        keys = [by, "node"]
    return ev.groupby(keys)["hours"].agg(["mean", "median", "count"])
