"""CLI of the case workflow: ``leadgrid escalate`` and ``leadgrid calendar import|show``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from layers.db import make_engine, session_factory, unit_of_work
from layers.settings import Settings
from layers.workflow import service
from layers.workflow.calendar import load_holiday_notice

calendar_app = typer.Typer(help="working-day calendar (holidays and swapped working days)",
                           no_args_is_help=True)


def _uow() -> Any:
    return unit_of_work(session_factory(make_engine(Settings())))


def escalate(
    at: Annotated[str | None, typer.Option(help="ISO time to run the pass at (default: now)")] = None,
) -> None:
    """Run one escalation pass: yellow/red warnings, urging, supervision (idempotent)."""
    now = datetime.fromisoformat(at) if at else datetime.now(UTC)
    if now.tzinfo is None:
        raise typer.BadParameter(f"--at {at!r} needs a time zone, e.g. {at}+08:00")
    with _uow() as s:
        r = service.escalate(s, now)
    typer.echo(json.dumps({"yellow": r.yellow, "red": r.red, "urged": r.urged,
                           "supervised": r.supervised}))


@calendar_app.command("import")
def calendar_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    year: Annotated[int | None, typer.Option(help="year, if the file does not declare it")] = None,
) -> None:
    """Load a State Council holiday notice (CSV or JSON) and recompute provisional deadlines."""
    records = load_holiday_notice(file, year=year)
    with _uow() as s:
        res = service.import_calendar(s, records, actor="cli", now=datetime.now(UTC),
                                      source=file.name)
    typer.echo(f"calendar {res.year}: {res.days} days stored; {res.recomputed} provisional "
               f"deadline(s) recomputed, {res.still_provisional} still provisional")


@calendar_app.command("show")
def calendar_show(year: int) -> None:
    """Print the stored holidays and swapped working days of YEAR."""
    with _uow() as s:
        days = service.calendar_days(s, year)
    if not days:
        typer.echo(f"no calendar data for {year}: deadlines there are provisional (Mon–Fri); "
                   "load the notice with `leadgrid calendar import FILE`")
        return
    for d in days:
        typer.echo(f"{d['date']}  {d['kind']:8s} {d['name']}")
