"""Bulk lead import from CSV and Excel with a column mapping and a per-row error report.

Good rows are stored even when bad rows exist; every bad row is reported with its row number
(as a spreadsheet user counts: the header is row 1), the field, the value and the reason, in a
CSV written beside the input. Re-importing the same file stores nothing twice (intake is
idempotent on channel + external id).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
from sqlalchemy import select, text

from layers import leads
from layers.errors import Invalid
from layers.models import Category

TARGETS = ("external_id", "lon", "lat", "address", "category", "description", "reported_at",
           "channel", "datum", "urgency", "complainant_name", "complainant_phone", "public")
CHUNK = 5000


@dataclass
class RowError:
    row: int
    field: str
    value: str
    reason: str


@dataclass
class ImportSummary:
    rows: int = 0
    created: int = 0
    existing: int = 0
    errors: list[RowError] = field(default_factory=list)
    error_report: Path | None = None


def parse_mapping(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``target=source,...`` → dict, checking targets against :data:`TARGETS`."""
    if not spec:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                raise Invalid("--map", part, "target=source pairs, e.g. lon=longitude,lat=latitude")
            t, s = part.split("=", 1)
            items.append((t.strip(), s.strip()))
    out = {}
    for t, s in items:
        if t not in TARGETS:
            raise Invalid("--map", t, f"a target among {', '.join(TARGETS)}")
        out[t] = s
    return out


def read_table(path: Path, *, sheet: str | None = None) -> pd.DataFrame:
    """Read CSV (UTF-8, UTF-8 with BOM, or GBK) or Excel as strings."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise Invalid("path", str(path), "an existing CSV or Excel file")
    if suffix in (".xlsx", ".xlsm", ".xls"):
        return pd.read_excel(path, sheet_name=sheet or 0, dtype=str)
    if suffix not in (".csv", ".txt", ".tsv"):
        raise Invalid("path", path.name, "a .csv, .tsv, .xlsx or .xls file")
    sep = "\t" if suffix == ".tsv" else ","
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding=enc)
        except UnicodeDecodeError:
            continue
    raise Invalid("path", path.name, "a file encoded in UTF-8 or GBK/GB18030")


def import_file(
    session_scope: Callable[[], Any],
    path: Path,
    *,
    mapping: Mapping[str, str],
    channel: str | None,
    datum: str | None,
    category: str | None = None,
    tz: str = "Asia/Shanghai",
    actor: str,
    now: datetime,
    submit: Callable[..., list[leads.Outcome]],
    sheet: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Import a CSV/Excel file of leads, one unit of work per chunk of rows.

    Parameters
    ----------
    session_scope
        Returns a context manager yielding a session (one unit of work per chunk, so a huge
        file does not hold one enormous transaction and a crash loses at most one chunk,
        which a re-run then stores — intake is idempotent).
    path
        The file.
    mapping
        target → source column; unmapped targets are read from a column of the same name.
    channel, datum, category
        Defaults for rows without their own.
    tz
        Time zone of date-times without an offset (an IANA name such as ``America/New_York``).
    actor, now
        Audited submitter and receipt time.
    submit
        :func:`layers.leads.submit` (or a partial of it with the settings' tolerances).
    sheet
        Excel sheet name.
    progress
        Called with (rows handled so far, total rows).

    Returns
    -------
    ImportSummary
        Counts and errors; errors are also written to ``<input>.errors.csv``.
    """
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid("--tz", tz, "an IANA time zone such as Asia/Shanghai") from None
    table = read_table(path, sheet=sheet)
    for target, source in mapping.items():
        if source not in table.columns:
            raise Invalid(f"--map {target}", source,
                          f"a column of {path.name}: {', '.join(map(str, table.columns))}")
    columns = {t: mapping.get(t, t) for t in TARGETS}
    columns = {t: c for t, c in columns.items() if c in table.columns}
    summary = ImportSummary(rows=len(table))
    with session_scope() as session:
        cats = set(session.scalars(select(Category.code)))
    records = table[list(columns.values())].to_dict("records") if columns else [{} for _ in range(len(table))]
    for start in range(0, len(records), CHUNK):
        good: list[leads.LeadIn] = []
        for offset, rec in enumerate(records[start:start + CHUNK]):
            raw = {t: rec.get(c) for t, c in columns.items()}
            try:
                good.append(leads.validate_lead(raw, channel=channel, datum=datum, category=category,
                                                categories=cats, now=now, tz=tz))
            except Invalid as exc:
                value = str(raw.get(exc.field, exc.detail.get("value", "")))
                summary.errors.append(RowError(start + offset + 2, exc.field, value, exc.message))
        if good:
            with session_scope() as session:
                outs = submit(session, good, actor=actor, now=now)
            if any(o.created for o in outs):
                with session_scope() as session:
                    _refresh_statistics(session)
            summary.created += sum(o.created for o in outs)
            summary.existing += sum(not o.created for o in outs)
        if progress:
            progress(min(start + CHUNK, len(records)), len(records))
    report = path.with_name(path.name + ".errors.csv")
    if summary.errors:
        with report.open("w", newline="", encoding="utf-8-sig") as f:
            w = csv.writer(f)
            w.writerow(["row", "field", "value", "reason"])
            for e in summary.errors:
                w.writerow([e.row, e.field, e.value, e.reason])
        summary.error_report = report
    elif report.exists():
        report.unlink()  # a stale report from an earlier run would mislead
    return summary


def _refresh_statistics(session: Any) -> None:
    """Let PostgreSQL plan the next chunk's key lookups with the rows just added.

    A bulk import grows ``leads`` far faster than autovacuum re-analyses it; with stale
    statistics the planner scans the table for every idempotency lookup. SQLite needs nothing.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ANALYZE leads"))
