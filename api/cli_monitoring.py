"""``leadgrid monitoring …`` and ``leadgrid hj212 serve``: points, the data-missing check, the receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from api.hj212_server import serve_hj212, tune_gc
from layers import monitoring
from layers.db import make_engine, session_factory, unit_of_work
from layers.settings import Settings

monitoring_app = typer.Typer(help="online monitoring points and alarms", no_args_is_help=True)
hj212_app = typer.Typer(help="HJ 212 receiver", no_args_is_help=True)


@monitoring_app.command("import")
def import_points(
    path: Path,
    datum: Annotated[str | None, typer.Option(help="datum of rows without one: wgs84|cgcs2000|gcj02|bd09")] = None,
    sheet: Annotated[str | None, typer.Option(help="Excel sheet")] = None,
) -> None:
    """Import monitoring points from CSV/Excel; bad rows go to PATH.errors.csv."""
    settings = Settings()
    sessions = session_factory(make_engine(settings))
    summary = monitoring.import_points(lambda: unit_of_work(sessions), path, actor="cli",
                                       now=datetime.now(UTC), datum=datum, sheet=sheet)
    typer.echo(json.dumps({"rows": summary.rows, "created": summary.created, "existing": summary.existing,
                           "errors": len(summary.errors),
                           "error_report": str(summary.error_report) if summary.error_report else None}))
    if summary.errors and not (summary.created or summary.existing):
        raise typer.Exit(1)


@monitoring_app.command("check-missing")
def check_missing(
    minutes: Annotated[float, typer.Option(min=1, help="silence after which a point raises a lead")] = 60,
) -> None:
    """Raise one data-missing lead per point silent for more than --minutes."""
    sessions = session_factory(make_engine(Settings()))
    with unit_of_work(sessions) as s:
        opened = monitoring.check_missing(s, now=datetime.now(UTC), silence=timedelta(minutes=minutes))
    typer.echo(json.dumps({"episodes_opened": len(opened), "episode_ids": opened}))


@monitoring_app.command("reassign")
def reassign() -> None:
    """Re-locate every point against the active boundary layer (after an activation)."""
    settings = Settings()
    sessions = session_factory(make_engine(settings))
    with unit_of_work(sessions) as s:
        n = monitoring.reassign_points(s, actor="cli", now=datetime.now(UTC),
                                       tolerance_m=settings.assign_tolerance_m,
                                       near_border_m=settings.near_border_m)
    typer.echo(json.dumps({"reassigned": n}))


@monitoring_app.command("ranking")
def ranking(
    level: Annotated[str, typer.Option(help="county|township")] = "county",
    days: Annotated[int, typer.Option(min=1, max=3660)] = 30,
) -> None:
    """Print the pollution index ranking as JSON lines."""
    sessions = session_factory(make_engine(Settings()))
    with unit_of_work(sessions) as s:
        for r in monitoring.ranking(s, level=level, now=datetime.now(UTC), days=days):
            typer.echo(json.dumps(r.__dict__, ensure_ascii=False))


@hj212_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "0.0.0.0",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 9212,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="packets per transaction at most")] = 2000,
    max_delay_ms: Annotated[int, typer.Option(min=0, max=5000, help="longest wait for a batch to fill")] = 50,
    missing_minutes: Annotated[float, typer.Option(
        min=0, help="raise data-missing leads after this silence (0: off); checked every minute")] = 0,
) -> None:
    """Receive HJ 212 over TCP and store it (readings, quarantine, exceedance leads)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    sessions = session_factory(make_engine(settings))

    async def main() -> None:
        sink = monitoring.DbSink(sessions, batch_size=batch_size, max_delay=max_delay_ms / 1000,
                                 missing_after=timedelta(minutes=missing_minutes) if missing_minutes else None)
        async with sink:
            typer.echo(f"hj212 receiver on {host}:{port} ({settings.backend})", err=True)
            await serve_hj212(host, port, sink)

    with contextlib.suppress(ImportError):
        # uvloop comes with uvicorn[standard]: a cheaper event loop per packet; asyncio otherwise.
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    tune_gc()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
        asyncio.run(main())
