"""``leadgrid boundaries``: import, validate, diff, activate, rollback, history, list."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import geopandas as gpd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from layers import boundary_review, jurisdictions
from layers.db import make_engine, session_factory, unit_of_work
from layers.errors import DomainError
from layers.settings import Settings
from layers.users import SYSTEM

app = typer.Typer(help="boundary layers: import, validate, diff, activate, rollback, history",
                  no_args_is_help=True)
err = Console(stderr=True)
ACTOR = "cli"


class _Ctx:
    def __init__(self) -> None:
        self.settings = Settings()
        self.sessions = session_factory(make_engine(self.settings))

    def uow(self) -> Any:
        return unit_of_work(self.sessions)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=err, transient=False)


def _when(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise DomainError(f"--at: {value!r} is not valid; an ISO date or date-time such as 2026-05-01") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


Json = Annotated[bool, typer.Option("--json", help="print the JSON report instead of text")]
MinArea = Annotated[float, typer.Option("--min-area-m2", help="overlap / gap threshold, m²")]


@app.command("import")
def import_(
    path: Path,
    layer: Annotated[str, typer.Option(help="name of the staged version to add to")],
    map_: Annotated[str, typer.Option("--map", help="code=FIELD,name=FIELD[,parent=FIELD][,level=FIELD]")],
    level: Annotated[str | None, typer.Option(help="city|county|township (or map level=FIELD)")] = None,
    datum: Annotated[str, typer.Option(help="wgs84|cgcs2000|gcj02|bd09")] = "cgcs2000",
    crs: Annotated[str | None, typer.Option(help="the file's CRS if it has no .prj, e.g. EPSG:4527")] = None,
    gpkg_layer: Annotated[str | None, typer.Option(help="layer inside a GeoPackage")] = None,
    encoding: Annotated[str | None, typer.Option(help="Shapefile attribute encoding (default: detect)")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="fix invalid geometries with make_valid")] = False,
    min_area_m2: MinArea = 10_000.0,
    activate: Annotated[bool, typer.Option("--activate", help="activate the layer after this import")] = False,
) -> None:
    """Import a boundary file into a staged layer (the active layer is not touched)."""
    c = _Ctx()
    now = datetime.now(UTC)
    with _progress() as bar, c.uow() as s:
        task = bar.add_task(f"importing {path.name}", total=None)
        rep = jurisdictions.import_layer(
            s, path, level=level, datum=datum, mapping=map_, layer=layer, actor=ACTOR, now=now,
            gpkg_layer=gpkg_layer, encoding=encoding, crs=crs, repair=repair, min_area_m2=min_area_m2,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
        if activate:
            jurisdictions.activate_layer(s, layer, actor=ACTOR, now=now, min_area_m2=min_area_m2,
                                         tolerance_m=c.settings.assign_tolerance_m,
                                         near_border_m=c.settings.near_border_m)
            rep.activated = True
    for w in rep.warnings:
        err.print(f"[yellow]warning[/yellow] {w}")
    if rep.encoding:
        err.print(f"attributes read as {rep.encoding} ({rep.encoding_source})")
    if rep.validation is not None:
        err.print(rep.validation.to_text(limit=20))
    out = rep.to_dict()
    out["validation"] = {k: v for k, v in out["validation"].items() if k != "findings"}
    typer.echo(json.dumps(out, ensure_ascii=False, default=str))


@app.command("validate")
def validate(
    target: Annotated[str, typer.Argument(help="a staged/active layer name, or a boundary file")],
    level: Annotated[str | None, typer.Option(help="for a file: city|county|township")] = None,
    map_: Annotated[str | None, typer.Option("--map", help="for a file: code=FIELD,name=FIELD[,parent=FIELD]")] = None,
    datum: Annotated[str, typer.Option(help="for a file: wgs84|cgcs2000|gcj02|bd09")] = "cgcs2000",
    crs: Annotated[str | None, typer.Option(help="for a file without .prj")] = None,
    min_area_m2: MinArea = 10_000.0,
    as_json: Json = False,
) -> None:
    """Validation report of a layer or a file; exit 1 when errors would block activation."""
    path = Path(target)
    if path.suffix.lower() in jurisdictions.SUPPORTED and path.exists():
        if not map_:
            raise DomainError("--map: required for a file, e.g. code=adcode,name=name")
        fields = jurisdictions._parse_mapping(map_)
        gdf = jurisdictions.read_layer(path)
        geoms, _ = jurisdictions._to_storage(gdf, datum, crs)
        frame = gpd.GeoDataFrame({
            "code": gdf[fields["code"]].map(jurisdictions._text),
            "name": gdf[fields["name"]].map(jurisdictions._text),
            "level": gdf[fields["level"]].map(jurisdictions._text) if "level" in fields else level,
            "parent_code": gdf[fields["parent"]].map(lambda v: jurisdictions._text(v) or None)
            if "parent" in fields else None,
        }, geometry=geoms, crs=4326)
        _, report = boundary_review.validate_frame(frame, layer=path.name, min_area_m2=min_area_m2)
    else:
        with _Ctx().uow() as s:
            report = boundary_review.validate_version(s, target, min_area_m2=min_area_m2)
    typer.echo(json.dumps(report.to_dict(), ensure_ascii=False) if as_json else report.to_text())
    if not report.ok:
        raise typer.Exit(1)


@app.command("diff")
def diff(layer: str, as_json: Json = False,
         limit: Annotated[int, typer.Option(help="leads listed (counts stay complete)")] = 1000) -> None:
    """Preview a staged layer: changed jurisdictions and the open leads and monitors that would move."""
    c = _Ctx()
    with c.uow() as s:
        p = boundary_review.preview(s, layer, tolerance_m=c.settings.assign_tolerance_m,
                                    near_border_m=c.settings.near_border_m)
    typer.echo(json.dumps(p.to_dict(limit), ensure_ascii=False, default=str) if as_json else p.to_text())


@app.command("activate")
def activate(layer: str, min_area_m2: MinArea = 10_000.0) -> None:
    """Activate a staged layer: validate, switch atomically, re-dispatch the open leads that move."""
    c = _Ctx()
    with c.uow() as s:
        rep = jurisdictions.activate_layer(s, layer, actor=ACTOR, now=datetime.now(UTC), min_area_m2=min_area_m2,
                                           tolerance_m=c.settings.assign_tolerance_m,
                                           near_border_m=c.settings.near_border_m)
    typer.echo(f"active: {rep.version.layer} (version {rep.version.id}); "
               f"{rep.leads_moved} open leads re-dispatched, {rep.points_moved} monitoring points re-assigned")


@app.command("rollback")
def rollback() -> None:
    """Return to the previously active layer, re-dispatching the open leads that move back."""
    c = _Ctx()
    with c.uow() as s:
        rep = jurisdictions.rollback(s, actor=ACTOR, now=datetime.now(UTC),
                                     tolerance_m=c.settings.assign_tolerance_m,
                                     near_border_m=c.settings.near_border_m)
    typer.echo(f"active: {rep.version.layer} (version {rep.version.id}, was {rep.previous}); "
               f"{rep.leads_moved} open leads re-dispatched")


@app.command("history")
def history(
    lon: Annotated[float | None, typer.Option(help="point longitude")] = None,
    lat: Annotated[float | None, typer.Option(help="point latitude")] = None,
    at: Annotated[str | None, typer.Option(help="ISO date or date-time (default: now)")] = None,
    datum: Annotated[str, typer.Option(help="wgs84|cgcs2000|gcj02|bd09")] = "wgs84",
    lead: Annotated[str | None, typer.Option(help="a lead code or id")] = None,
) -> None:
    """Which township held a point on a date, or a lead's jurisdiction when received."""
    with _Ctx().uow() as s:
        if lead is not None:
            out = jurisdictions.lead_history(s, SYSTEM, lead)
        elif lon is not None and lat is not None:
            out = jurisdictions.township_at(s, lon, lat, at=_when(at), datum=datum)
        else:
            raise DomainError("history: give --lon and --lat (with --at), or --lead")
    typer.echo(json.dumps(out, ensure_ascii=False, default=str))


@app.command("list")
def list_() -> None:
    """List boundary versions with their periods in force."""
    with _Ctx().uow() as s:
        for v in jurisdictions.list_versions(s):
            typer.echo(f"{v.id}\t{v.layer}\t{v.status}\t{v.datum}\t{v.effective_from or ''}\t{v.effective_to or ''}")
