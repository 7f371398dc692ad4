"""Exports of leads and KPIs as CSV, GeoJSON and Excel, streamed in batches.

Each encoder turns the record iterator of :func:`layers.leads.iter_export` (already filtered and
scoped inside the query) into chunks of bytes, so memory stays flat however many leads match.
Excel is written with openpyxl's write-only mode into a temporary file that is then read back
in chunks (an .xlsx is a zip; it cannot be emitted before it is complete).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from layers.disclosure import CLOSED_STATES
from layers.leads import EXPORT_COLUMNS, LeadFilter, _filtered
from layers.models import Lead
from layers.users import Principal

EXCEL_MAX_ROWS = 1_048_575  # one header row plus this many data rows fill a sheet
KPI_COLUMNS = ["county_code", "body_code", "total", "open", "closed", "open_overdue", "closed_on_time",
               "on_time_rate"]
_CHUNK = 1 << 16


def _cell(v: Any) -> Any:
    # Spreadsheet formula injection: a cell starting with = + - @ would be evaluated by Excel.
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def csv_chunks(records: Iterable[Mapping[str, Any]], columns: list[str]) -> Iterator[bytes]:
    """UTF-8 CSV (with BOM, so Excel opens Chinese text correctly), a few hundred rows per chunk."""
    buf = io.StringIO()
    w = csv.writer(buf)
    buf.write("\ufeff")
    w.writerow(columns)
    for i, rec in enumerate(records, 1):
        w.writerow([_cell(rec.get(c)) for c in columns])
        if i % 500 == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def geojson_chunks(records: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """An RFC 7946 FeatureCollection (lon, lat order), one feature per lead."""
    yield b'{"type":"FeatureCollection","features":['
    first = True
    for rec in records:
        props = {k: v for k, v in rec.items() if k not in ("lon", "lat")}
        geom = None if rec.get("lon") is None else {"type": "Point", "coordinates": [rec["lon"], rec["lat"]]}
        feat = json.dumps({"type": "Feature", "id": rec.get("code"), "geometry": geom, "properties": props},
                          ensure_ascii=False, separators=(",", ":"), default=str)
        yield (feat if first else "," + feat).encode()
        first = False
    yield b"]}"


def xlsx_chunks(records: Iterable[Mapping[str, Any]], columns: list[str], title: str = "leads") -> Iterator[bytes]:
    """An Excel workbook written row by row (openpyxl write-only), then streamed in chunks."""
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title)
    ws.append(columns)
    for i, rec in enumerate(records):
        if i >= EXCEL_MAX_ROWS:
            break
        ws.append([_cell(rec.get(c)) for c in columns])
    with tempfile.TemporaryFile() as fh:
        wb.save(fh)
        fh.seek(0)
        while chunk := fh.read(_CHUNK):
            yield chunk


def paged(records: Iterator[dict[str, Any]], page: int | None, page_size: int | None) -> Iterator[dict[str, Any]]:
    """Only the records of one 1-based page (all of them when ``page`` is ``None``)."""
    if page is None or page_size is None:
        yield from records
        return
    start, stop = (page - 1) * page_size, page * page_size
    for i, rec in enumerate(records):
        if i >= stop:
            return
        if i >= start:
            yield rec


def kpi_rows(session: Session, p: Principal, f: LeadFilter, *, now: datetime) -> list[dict[str, Any]]:
    """Counts per county × body over the leads ``p`` may see that match ``f``.

    ``on_time_rate`` follows DOMAIN.md: closed on time / (closed + open overdue), so a backlog
    of overdue open leads lowers it instead of hiding.
    """
    is_closed = Lead.status.in_(CLOSED_STATES)
    closed = case((is_closed, 1), else_=0)
    overdue = case((and_(~is_closed, Lead.due_at.is_not(None), Lead.due_at < now), 1), else_=0)
    on_time = case((and_(is_closed, Lead.closed_at.is_not(None),
                         (Lead.due_at.is_(None)) | (Lead.closed_at <= Lead.due_at)), 1), else_=0)
    counts: Any = select(Lead.county_code, Lead.body_code, func.count(Lead.id), func.sum(closed),
                                 func.sum(overdue), func.sum(on_time))
    stmt = _filtered(counts, p, f)
    rows = session.execute(stmt.group_by(Lead.county_code, Lead.body_code)
                           .order_by(Lead.county_code, Lead.body_code)).all()
    out = []
    for county, body, n, cl, od, ot in rows:
        cl, od, ot = int(cl or 0), int(od or 0), int(ot or 0)
        denom = cl + od
        out.append({"county_code": county, "body_code": body, "total": int(n), "open": int(n) - cl,
                    "closed": cl, "open_overdue": od, "closed_on_time": ot,
                    "on_time_rate": round(ot / denom, 4) if denom else None})
    return out


__all__ = ["EXPORT_COLUMNS", "KPI_COLUMNS", "csv_chunks", "geojson_chunks", "kpi_rows", "paged", "xlsx_chunks"]
