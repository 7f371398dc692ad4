"""The ``leadgrid`` command line. It honours ``LEADGRID_DATABASE_URL`` like the service."""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from api import cli_monitoring, cli_workflow
from api.cli_boundaries import app as boundaries_app
from layers import audit, demo, jurisdictions, lead_import, leads, migrate, routing, users
from layers.db import make_engine, session_factory, unit_of_work
from layers.errors import DomainError
from layers.settings import Settings
from layers.users import SYSTEM

app = typer.Typer(help="leadgrid: supervision of pollution-prevention leads", no_args_is_help=True,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="database schema", no_args_is_help=True)
users_app = typer.Typer(help="users and roles", no_args_is_help=True)
leads_app = typer.Typer(help="bulk lead import and export", no_args_is_help=True)
demo_app = typer.Typer(help="demo data", no_args_is_help=True)
audit_app = typer.Typer(help="audit trail", no_args_is_help=True)
for sub, name in ((db_app, "db"), (users_app, "users"), (boundaries_app, "boundaries"),
                  (leads_app, "leads"), (demo_app, "demo"), (audit_app, "audit")):
    app.add_typer(sub, name=name)
app.add_typer(cli_workflow.calendar_app, name="calendar")
app.add_typer(cli_monitoring.monitoring_app, name="monitoring")
app.add_typer(cli_monitoring.hj212_app, name="hj212")
app.command("escalate")(cli_workflow.escalate)

err = Console(stderr=True)
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class Ctx:
    def __init__(self) -> None:
        self.settings = Settings()
        self.engine = make_engine(self.settings)
        self.sessions = session_factory(self.engine)

    def uow(self) -> Any:
        return unit_of_work(self.sessions)


def _ctx() -> Ctx:
    return Ctx()


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=err, transient=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database named by LEADGRID_DATABASE_URL."""
    c = _ctx()
    rev = migrate.upgrade(c.engine)
    with c.uow() as s:
        added = routing.seed(s, DATA_DIR, now=datetime.now(UTC))
    err.print(f"database at revision {rev} ({c.settings.backend}); reference data added: {added}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database."""
    typer.echo(migrate.current_revision(_ctx().engine) or "empty")


@demo_app.command("load")
def demo_load(leads_n: Annotated[int, typer.Option("--leads", min=0, max=200_000)] = 3000) -> None:
    """Load demo boundaries, users and leads where absent (idempotent)."""
    c = _ctx()
    now = datetime.now(UTC)
    with c.uow() as s:
        made = demo.load_boundaries(s, Path("var") / "demo", now=now)
    err.print("demo boundaries " + ("imported and activated" if made else "already present"))
    with c.uow() as s:
        creds = demo.create_users(s)
    with c.uow() as s:
        created = demo.load_leads(s, leads_n, now=now) if demo.lead_count(s) == 0 else 0
    err.print(f"demo leads added: {created}")
    if creds:
        err.print("[bold]Demo users (shown once, not stored in clear):[/bold]")
        for cr in creds:
            typer.echo(f"  {cr.username:<11} password: {cr.password}   roles: {','.join(cr.roles)}"
                       + (f"   scope: {','.join(cr.scope)}" if cr.scope else ""))


@users_app.command("add")
def users_add(
    username: str,
    role: Annotated[list[str], typer.Option("--role", help="admin|dispatcher|leader|field|gis|inspector")],
    scope: Annotated[list[str], typer.Option("--scope", help="jurisdiction code (repeatable)")] = [],  # noqa: B006
    body: Annotated[list[str], typer.Option("--body", help="body code (repeatable)")] = [],  # noqa: B006
    password: Annotated[str | None, typer.Option(help="omit to be prompted")] = None,
) -> None:
    """Create a user with roles and a scope."""
    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    c = _ctx()
    with c.uow() as s:
        u = users.add_user(s, username, password, role, scope_codes=scope, scope_bodies=body)
        typer.echo(f"created {u.username} roles={u.roles} scope={u.scope_codes + u.scope_bodies or 'city'}")


@leads_app.command("import")
def leads_import(
    path: Path,
    map_: Annotated[str | None, typer.Option("--map", help="target=source,... e.g. lon=longitude")] = None,
    channel: Annotated[str | None, typer.Option(help="channel for rows without one")] = None,
    datum: Annotated[str | None, typer.Option(help="datum for rows without one")] = None,
    sheet: Annotated[str | None, typer.Option(help="Excel sheet")] = None,
    category: Annotated[str | None, typer.Option(help="category for rows without one")] = None,
    tz: Annotated[str, typer.Option("--tz", help="time zone of times without an offset")] = "Asia/Shanghai",
) -> None:
    """Import leads from CSV or Excel; bad rows go to PATH.errors.csv, good rows are stored."""
    c = _ctx()
    now = datetime.now(UTC)
    mapping = lead_import.parse_mapping(map_)
    submit = partial(leads.submit, tolerance_m=c.settings.assign_tolerance_m,
                     near_border_m=c.settings.near_border_m)
    with _progress() as bar:
        task = bar.add_task(f"importing {path.name}", total=None)
        summary = lead_import.import_file(
            c.uow, path, mapping=mapping, channel=channel, datum=datum, category=category, tz=tz,
            actor="cli", now=now,
            submit=submit, sheet=sheet, progress=lambda n, total: bar.update(task, completed=n, total=total),
        )
    typer.echo(json.dumps({"rows": summary.rows, "created": summary.created, "existing": summary.existing,
                           "errors": len(summary.errors),
                           "error_report": str(summary.error_report) if summary.error_report else None}))
    if summary.errors and not (summary.created or summary.existing):
        raise typer.Exit(1)


@leads_app.command("export")
def leads_export(
    format_: Annotated[str, typer.Option("--format", help="csv|geojson")] = "csv",
    out: Annotated[Path | None, typer.Option(help="file (default: standard output)")] = None,
) -> None:
    """Export every lead with its assignment (CSV or GeoJSON, streamed)."""
    if format_ not in ("csv", "geojson"):
        raise DomainError(f"--format: {format_!r} is not valid; csv or geojson")
    c = _ctx()
    fh = out.open("w", newline="", encoding="utf-8") if out else sys.stdout
    try:
        with c.uow() as s:
            rows = leads.iter_export(s, SYSTEM, leads.LeadFilter())
            if format_ == "csv":
                w = csv.DictWriter(fh, fieldnames=leads.EXPORT_COLUMNS)
                w.writeheader()
                for r in rows:
                    w.writerow(r)
            else:
                fh.write('{"type":"FeatureCollection","features":[\n')
                first = True
                for r in rows:
                    geom = None if r["lon"] is None else {"type": "Point", "coordinates": [r["lon"], r["lat"]]}
                    props = {k: v for k, v in r.items() if k not in ("lon", "lat")}
                    fh.write(("" if first else ",\n") + json.dumps(
                        {"type": "Feature", "geometry": geom, "properties": props}, ensure_ascii=False))
                    first = False
                fh.write("\n]}\n")
    finally:
        if out:
            fh.close()


@app.command("lookup")
def lookup(lon: float, lat: float,
           datum: Annotated[str, typer.Option(help="wgs84|cgcs2000|gcj02|bd09")] = "wgs84") -> None:
    """Print the jurisdictions containing a point, as JSON."""
    from geo import crs as gcrs
    from geo.assign import lookup as lookup_point

    c = _ctx()
    with c.uow() as s:
        index = jurisdictions.INDEX_CACHE.get(s)
    if index is None:
        raise DomainError("no boundary layer is active; import and activate one first")
    x, y = gcrs.to_storage(np.array([lon]), np.array([lat]), datum)
    res = lookup_point(index, float(x[0]), float(y[0]), tolerance_m=c.settings.assign_tolerance_m,
                       near_border_m=c.settings.near_border_m)
    typer.echo(json.dumps(res, ensure_ascii=False, default=str))


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit hash chain; exit 1 and name the first bad event if tampered."""
    c = _ctx()
    with c.uow() as s:
        res = audit.verify(s)
    if res.ok:
        typer.echo(f"audit chain intact: {res.checked} events")
        return
    typer.echo(f"AUDIT CHAIN BROKEN at event id={res.first_bad_id} seq={res.first_bad_seq}: {res.problem}")
    raise typer.Exit(1)


@app.command("serve")
def serve(host: str = "127.0.0.1",
          port: Annotated[int, typer.Option(envvar="PORT", min=1, max=65535)] = 8000) -> None:
    """Serve the API (and maps) with uvicorn."""
    import uvicorn

    from api.app import create_app

    application = create_app(Settings())
    application.state.escalate_periodically = True  # escalation passes every escalation_interval_s
    uvicorn.run(application, host=host, port=port, log_level="info")


def main() -> None:
    """Console entry point: domain errors print one clear line and exit 2."""
    try:
        app()
    except DomainError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        sys.exit(2)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
