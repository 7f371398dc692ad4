"""Versioned boundary layers: import as a staged version, activate, roll back, and history.

A *layer* is one generation of boundaries (MapIt's idea): imports with the same layer name add
levels to one staged version until it is activated; activation is one atomic switch that also
re-dispatches the open leads (and re-assigns the monitoring points) whose jurisdiction the new
boundaries change. Closed leads keep the assignment they were handled under. The in-memory
:class:`geo.assign.BoundaryIndex` of the active version is cached per process and rebuilt when
another process activates a new version.

History: each version's ``effective_from`` / ``effective_to`` hold its latest period in force;
the full sequence of periods (a version can be in force twice after a rollback) is read from the
hash-chained audit events every activation and rollback writes (:func:`activation_periods`).
"""

from __future__ import annotations

import codecs
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from sqlalchemy import Table, bindparam, event, func, insert, select, update
from sqlalchemy.orm import Session

from geo import crs as gcrs
from geo.assign import BoundaryIndex
from geo.assign import lookup as lookup_point
from layers import audit
from layers.db import write_lock
from layers.errors import Conflict, Invalid, NotFound
from layers.models import (
    AuditEvent,
    BoundaryVersion,
    Dispatch,
    Jurisdiction,
    Lead,
    Level,
    MonitoringPoint,
    VersionStatus,
)
from layers.shapes import as_multipolygon, from_shape, wkb_array_to_shapes

LEVEL_ORDER = [Level.city.value, Level.county.value, Level.township.value]
SUPPORTED = (".geojson", ".json", ".zip", ".gpkg", ".shp")
# Level values seen in Chinese and English source files, mapped to ours.
LEVEL_ALIASES = {
    "city": "city", "prefecture": "city", "市": "city", "地级市": "city", "地级": "city",
    "county": "county", "district": "county", "区县": "county", "县": "county", "区": "county",
    "县级": "county", "县级市": "county",
    "township": "township", "town": "township", "street": "township", "subdistrict": "township",
    "乡镇": "township", "镇": "township", "乡": "township", "街道": "township", "乡级": "township",
}
# Validation findings that cannot even be stored (the unique code constraint, the level and
# geometry columns): the import is refused. Everything else is staged and reported, and the
# errors among it block activation.
UNSTORABLE = ("missing_code", "duplicate_code", "missing_name", "empty_geometry",
              "wrong_geometry_type", "unknown_level", "invalid_geometry")
ACTIVATION_ACTIONS = ("boundaries.activate", "boundaries.rollback")


@dataclass
class ImportReport:
    """What one import did."""

    layer: str
    version_id: int
    level: str
    features: int
    parents_inferred: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    activated: bool = False
    encoding: str | None = None
    encoding_source: str = ""
    source_crs: str | None = None
    datum: str = ""
    validation: Any = None  # boundary_review.ValidationReport of the whole staged version

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer, "version": self.version_id, "level": self.level,
            "features": self.features, "activated": self.activated, "encoding": self.encoding,
            "encoding_source": self.encoding_source, "source_crs": self.source_crs,
            "datum": self.datum, "warnings": self.warnings,
            "parents_inferred": self.parents_inferred,
            "validation": self.validation.to_dict(limit=200) if self.validation is not None else None,
        }


def _parse_mapping(mapping: Mapping[str, str] | str) -> dict[str, str]:
    if isinstance(mapping, str):
        out: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in mapping.split(","))):
            if "=" not in part:
                raise Invalid("--map", part, "target=FIELD pairs such as code=adcode,name=name")
            k, v = (s.strip() for s in part.split("=", 1))
            out[k] = v
        mapping = out
    allowed = {"code", "name", "parent", "level"}
    for k in mapping:
        if k not in allowed:
            raise Invalid("--map", k, f"targets are {', '.join(sorted(allowed))}")
    for need in ("code", "name"):
        if need not in mapping:
            raise Invalid("--map", dict(mapping), f"must map {need}=FIELD")
    return dict(mapping)


# ------------------------------------------------------------------------------ reading


def _shapefile_parts(path: Path) -> tuple[bytes | None, bytes | None]:
    """(.cpg bytes, .dbf bytes) of a Shapefile or of the first Shapefile in a zip."""
    if path.suffix.lower() == ".shp":
        cpg_path, dbf_path = path.with_suffix(".cpg"), path.with_suffix(".dbf")
        return (cpg_path.read_bytes() if cpg_path.exists() else None,
                dbf_path.read_bytes() if dbf_path.exists() else None)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        shp = next((n for n in names if n.lower().endswith(".shp")), None)
        if shp is None:
            raise Invalid("path", path.name, "a zip holding a Shapefile (.shp, .shx, .dbf)")
        stem = shp[:-4]
        by_lower = {n.lower(): n for n in names}
        cpg = by_lower.get((stem + ".cpg").lower())
        dbf = by_lower.get((stem + ".dbf").lower())
        return (z.read(cpg) if cpg else None, z.read(dbf) if dbf else None)


_CPG_NAMES = {"65001": "utf-8", "936": "gbk", "54936": "gb18030", "1252": "cp1252", "437": "cp437"}


def detect_encoding(path: Path) -> tuple[str | None, str]:
    """The attribute encoding of a Shapefile (plain or zipped), and how it was found.

    The ``.cpg`` file wins when present and names a known codec; otherwise the text of the
    ``.dbf`` (field names and records) is decoded as UTF-8, then as GB18030 (a superset of GBK
    and GB2312, the encodings Chinese bureaus' Shapefiles come in).

    Parameters
    ----------
    path
        ``.shp`` or ``.zip``.

    Returns
    -------
    (str or None, str)
        The codec name (``None`` for other formats) and ``".cpg"``, ``"detected"`` or a note.
    """
    path = Path(path)
    if path.suffix.lower() not in (".shp", ".zip"):
        return None, "not a Shapefile"
    cpg, dbf = _shapefile_parts(path)
    if cpg is not None:
        name = cpg.decode("ascii", "ignore").strip()
        name = _CPG_NAMES.get(name, name)
        try:
            return codecs.lookup(name).name, ".cpg"
        except LookupError:
            pass  # an unknown .cpg is as good as none: fall through to detection
    if dbf is None:
        return None, "no .dbf"
    for enc in ("utf-8", "gb18030"):
        try:
            dbf[32:].decode(enc)
            return enc, "detected"
        except UnicodeDecodeError:
            continue
    return "latin-1", "detected (neither UTF-8 nor GB18030)"


def read_layer(path: Path, *, layer: str | None = None, encoding: str | None = None) -> gpd.GeoDataFrame:
    """Read GeoJSON, zipped Shapefile, Shapefile or GeoPackage with pyogrio.

    Parameters
    ----------
    path
        The file.
    layer
        Layer name inside a GeoPackage (default: the first).
    encoding
        Attribute encoding for Shapefiles (default: :func:`detect_encoding`).

    Returns
    -------
    geopandas.GeoDataFrame
        As read, in the file's CRS (``None`` when it declares none).
    """
    path = Path(path)
    if not path.exists():
        raise Invalid("path", str(path), "an existing file")
    if path.suffix.lower() not in SUPPORTED:
        raise Invalid("path", path.name, f"a file ending in {', '.join(SUPPORTED)}")
    kw: dict[str, Any] = {"engine": "pyogrio"}
    if layer:
        kw["layer"] = layer
    if encoding is None and path.suffix.lower() in (".zip", ".shp"):
        encoding, _ = detect_encoding(path)
    if encoding:
        kw["encoding"] = encoding
    try:
        return gpd.read_file(path, **kw)
    except Exception as exc:  # pyogrio raises several types; the user needs the file and cause
        raise Invalid("path", path.name, f"a readable vector file ({exc})") from exc


def _guess_projected(bounds: np.ndarray) -> str:
    """A hint for a file without CRS whose coordinates are not degrees."""
    x = float(bounds[0])
    if 2.5e7 <= x < 4.6e7:
        zone = int(x // 1e6)
        return (f"x starts with {zone}: looks like CGCS2000 3-degree Gauss-Krüger zone {zone} "
                f"with zone prefix (EPSG:{4513 + zone - 25})")
    if 1e5 <= x <= 9e5:
        return ("looks like a Gauss-Krüger projection without zone prefix; for Xuzhou (CM 117°E) "
                "that is EPSG:4548")
    return "projected coordinates"


def _to_storage(gdf: gpd.GeoDataFrame, datum: str, crs: Any = None) -> tuple[gpd.GeoSeries, str | None]:
    """Geometry in storage lon/lat, and the source CRS used (as text)."""
    d = gcrs.parse_datum(datum)
    geoms = gdf.geometry
    if crs is not None:
        try:
            declared = pyproj.CRS.from_user_input(crs)
        except pyproj.exceptions.CRSError as exc:
            raise Invalid("crs", crs, "a CRS pyproj knows, such as EPSG:4527 or EPSG:4490") from exc
        geoms = geoms.set_crs(declared, allow_override=True)
    elif geoms.crs is None:
        b = geoms.total_bounds
        if not (-180 <= b[0] <= b[2] <= 180 and -90 <= b[1] <= b[3] <= 90):
            raise Invalid("crs", None, f"a declared CRS: the file has none and its coordinates "
                          f"({b[0]:.0f}, {b[1]:.0f}) are not degrees; {_guess_projected(b)}")
    source = geoms.crs.to_string() if geoms.crs is not None else None
    if geoms.crs is not None and geoms.crs.is_projected:
        if d.value in ("gcj02", "bd09"):
            raise Invalid("datum", d.value, "wgs84 or cgcs2000 for a projected file "
                          "(GCJ-02 and BD-09 exist only as lon/lat)")
        # Gauss-Krüger and other projected inputs: unproject to lon/lat first.
        geoms = geoms.to_crs(4326)
    elif geoms.crs is not None and geoms.crs.to_epsg() not in (4326, 4490, None):
        geoms = geoms.to_crs(4326)
    out = gcrs.geometry_to_storage(np.asarray(geoms.values, dtype=object), d)
    return gpd.GeoSeries(out, crs=4326, index=gdf.index), source


def _get_or_create_staged(session: Session, layer: str, datum: str, source: str, actor: str) -> BoundaryVersion:
    version = session.scalar(select(BoundaryVersion).where(BoundaryVersion.layer == layer))
    if version is None:
        version = BoundaryVersion(layer=layer, datum=datum, source=source, created_by=actor)
        session.add(version)
        session.flush()
        return version
    if version.status != VersionStatus.staged.value:
        raise Conflict(
            f"layer {layer!r} is {version.status}; import into a new layer name",
            field="layer",
        )
    return version


def layer_frame(session: Session, version_id: int) -> gpd.GeoDataFrame:
    """All jurisdictions of a version as a GeoDataFrame (storage lon/lat)."""
    rows = session.execute(
        select(
            Jurisdiction.code, Jurisdiction.name, Jurisdiction.level,
            Jurisdiction.parent_code, Jurisdiction.geom,
        ).where(Jurisdiction.version_id == version_id).order_by(Jurisdiction.code)
    ).all()
    geoms = wkb_array_to_shapes([r.geom for r in rows]) if rows else np.array([], dtype=object)
    return gpd.GeoDataFrame(
        {
            "code": [r.code for r in rows],
            "name": [r.name for r in rows],
            "level": [r.level for r in rows],
            "parent_code": [r.parent_code for r in rows],
        },
        geometry=gpd.GeoSeries(geoms, crs=4326),
    )


def _infer_parents(children: gpd.GeoDataFrame, parents: gpd.GeoDataFrame, metric: Any) -> list[dict[str, Any]]:
    """Parent = the upper-level polygon holding the largest share of the child's area."""
    c = children.to_crs(metric)
    p = parents.to_crs(metric)
    tree = shapely.STRtree(p.geometry.values)
    child_idx, parent_idx = tree.query(c.geometry.values, predicate="intersects")
    inter = shapely.area(shapely.intersection(c.geometry.values[child_idx], p.geometry.values[parent_idx]))
    frame = pd.DataFrame({"c": child_idx, "p": parent_idx, "a": inter})
    frame = frame[frame.a > 0].sort_values(["c", "a"], ascending=[True, False])
    best = frame.drop_duplicates("c").set_index("c")
    areas = shapely.area(c.geometry.values)
    out = []
    for ci in range(len(c)):
        if ci not in best.index:
            out.append({"code": children.code.iloc[ci], "parent": None, "share": 0.0})
        else:
            pi = int(best.at[ci, "p"])
            out.append({
                "code": children.code.iloc[ci],
                "parent": parents.code.iloc[pi],
                "share": round(float(best.at[ci, "a"] / areas[ci]), 4) if areas[ci] else 0.0,
            })
    return out


def _levels_of(values: pd.Series) -> pd.Series:
    mapped = values.map(lambda v: LEVEL_ALIASES.get(_text(v).lower(), LEVEL_ALIASES.get(_text(v))))
    bad = sorted({_text(v) for v, m in zip(values, mapped, strict=True) if m is None})
    if bad:
        raise Invalid("--map level", bad[:10], f"level values {', '.join(sorted(LEVEL_ALIASES))}")
    return mapped


def import_layer(
    session: Session,
    path: Path,
    *,
    level: str | None = None,
    datum: str,
    mapping: Mapping[str, str] | str,
    layer: str,
    actor: str,
    now: datetime,
    gpkg_layer: str | None = None,
    encoding: str | None = None,
    crs: Any = None,
    repair: bool = False,
    min_area_m2: float = 10_000.0,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import one level (or, with ``level=FIELD`` mapped, several) into the staged version ``layer``.

    The active version is never touched. Features that cannot be stored (missing or duplicate
    codes, missing names, empty or non-polygon geometry, unknown levels) or are invalid polygons
    (unless ``repair``) refuse the whole import; every other finding of
    :func:`layers.boundary_review.validate_frame` is staged and reported, and its errors block
    activation until fixed.

    Parameters
    ----------
    session
        Unit of work (any error leaves no half-imported version: the caller rolls back).
    path
        GeoJSON, zipped Shapefile (with or without ``.prj`` / ``.cpg``), Shapefile or GeoPackage.
    level
        ``city``, ``county`` or ``township``; omit when ``mapping`` maps ``level``.
    datum
        Datum of the file's lon/lat: ``wgs84``, ``cgcs2000``, ``gcj02`` or ``bd09``. Projected
        files (e.g. CGCS2000 Gauss-Krüger) are unprojected first (datum ``cgcs2000``).
    mapping
        ``code=FIELD,name=FIELD[,parent=FIELD][,level=FIELD]``.
    layer
        Name of the staged version to add to.
    actor, now
        Who imports, and when (audited).
    gpkg_layer
        GeoPackage layer name.
    encoding
        Shapefile attribute encoding; default: the ``.cpg``, else detected (UTF-8, else GB18030).
    crs
        The file's CRS when it has no ``.prj`` or declares a wrong one (``EPSG:4527``, ...).
    repair
        Repair invalid geometries with ``make_valid`` (reported) instead of staging them invalid.
    min_area_m2
        Overlap / gap threshold of the validation report.
    progress
        Called with (done, total) while rows are written.

    Returns
    -------
    ImportReport
        With the validation report of the whole staged version.
    """
    from layers.boundary_review import validate_frame

    fields = _parse_mapping(mapping)
    if level is None and "level" not in fields:
        raise Invalid("level", None, f"one of {', '.join(LEVEL_ORDER)}, or map level=FIELD")
    if level is not None and level not in LEVEL_ORDER:
        raise Invalid("level", level, f"one of {', '.join(LEVEL_ORDER)}")
    path = Path(path)
    enc, enc_source = (encoding, "given") if encoding else detect_encoding(path)
    gdf = read_layer(path, layer=gpkg_layer, encoding=enc)
    if gdf.empty:
        raise Invalid("path", path.name, "a layer with at least one feature")
    for target, column in fields.items():
        if column not in gdf.columns:
            fields_in_file = ", ".join(map(str, gdf.columns.drop("geometry")))
            raise Invalid(f"--map {target}", column, f"a field of the file: {fields_in_file}")

    frame = gpd.GeoDataFrame(
        {
            "code": gdf[fields["code"]].map(_text),
            "name": gdf[fields["name"]].map(_text),
            "parent_code": gdf[fields["parent"]].map(lambda v: _text(v) or None) if "parent" in fields else None,
            "level": _levels_of(gdf[fields["level"]]) if "level" in fields else level,
        },
        geometry=gdf.geometry,
        crs=gdf.crs,
    )
    storage, source_crs = _to_storage(frame, datum, crs)
    frame = frame.set_geometry(storage)
    levels = sorted(set(frame.level), key=LEVEL_ORDER.index)

    version = _get_or_create_staged(session, layer, datum, path.name, actor)
    existing = layer_frame(session, version.id)
    for lv in levels:
        if (existing.level == lv).any():
            raise Conflict(f"layer {layer!r} already has a {lv} level; use a new layer name", field="level")
    dup = sorted(set(existing.code) & set(frame.code))
    if dup:
        raise Invalid("code", dup[:5], "codes not already in this layer")

    report = ImportReport(layer=layer, version_id=version.id, level=",".join(levels), features=len(frame),
                          encoding=enc, encoding_source=enc_source, source_crs=source_crs, datum=datum)
    if len(levels) == 1 and levels[0] != "city" and "parent" not in fields:
        upper = LEVEL_ORDER[LEVEL_ORDER.index(levels[0]) - 1]
        upper_rows = existing[existing.level == upper]
        ok = ~(frame.geometry.is_empty | frame.geometry.isna())
        if not upper_rows.empty and ok.all():
            metric = gcrs.metric_crs_for(tuple(frame.total_bounds))
            inferred = _infer_parents(frame, upper_rows, metric)
            frame["parent_code"] = [r["parent"] for r in inferred]
            report.parents_inferred = inferred
            for r in inferred:
                if r["share"] < 0.9:
                    report.warnings.append(f"{r['code']}: parent {r['parent']} holds only {r['share']:.0%} of its area")

    combined = gpd.GeoDataFrame(pd.concat([existing, frame], ignore_index=True), geometry="geometry", crs=4326)
    combined, validation = validate_frame(combined, layer=layer, min_area_m2=min_area_m2, repair=repair)
    report.validation = validation
    refused = [f for f in validation.errors if f.kind in UNSTORABLE]
    if refused:
        shown = "; ".join(f.message for f in refused[:10])
        more = f" (and {len(refused) - 10} more)" if len(refused) > 10 else ""
        hint = " (or import with --repair to fix invalid geometries with make_valid)" if any(
            f.kind == "invalid_geometry" for f in refused) else ""
        raise Invalid("features", shown + more, "valid, uniquely coded, named polygons of a known level" + hint)
    new = combined.iloc[len(existing):]
    geoms = [as_multipolygon(g) for g in new.geometry.values]
    metric = gcrs.metric_crs_for(tuple(float(b) for b in shapely.total_bounds(np.asarray(geoms, dtype=object))))  # type: ignore[arg-type]
    areas = shapely.area(gpd.GeoSeries(geoms, crs=4326).to_crs(metric).values) / 1e6
    rows = [
        {"version_id": version.id, "code": code, "name": name, "level": lv, "parent_code": parent,
         "area_km2": float(a), "geom": from_shape(g)}
        for code, name, lv, parent, a, g in zip(new.code, new.name, new.level, new.parent_code, areas, geoms,
                                                strict=True)
    ]
    chunk = 200
    for start in range(0, len(rows), chunk):
        session.execute(insert(Jurisdiction), rows[start:start + chunk])
        if progress:
            progress(min(start + chunk, len(rows)), len(rows))
    audit.record(session, [audit.EventIn(
        at=now, actor=actor, action="boundaries.import", entity="boundary_version",
        entity_id=str(version.id), before={},
        after={"layer": layer, "level": report.level, "features": len(rows), "datum": datum,
               "source": path.name, "source_crs": source_crs, "encoding": enc,
               "repaired": [f.codes[0] for f in validation.repairs if f.codes],
               "errors": len(validation.errors), "warnings": len(validation.warnings)},
    )])
    return report


def _text(value: Any) -> str:
    """A code or name as text: integers read from a file lose their '.0', blanks become ''."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# ------------------------------------------------------------------------------ activation


@dataclass
class ActivationReport:
    """What an activation or rollback did."""

    version: BoundaryVersion
    previous: str | None
    leads_moved: int = 0
    leads_checked: int = 0
    points_moved: int = 0
    pairs: list[dict[str, Any]] = field(default_factory=list)
    moved_lead_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"active": self.version.layer, "version": self.version.id, "previous": self.previous,
                "leads_checked": self.leads_checked, "leads_moved": self.leads_moved,
                "monitoring_points_moved": self.points_moved, "pairs": self.pairs}


def activate(session: Session, layer: str, *, actor: str, now: datetime, **kw: Any) -> BoundaryVersion:
    """Make the staged version ``layer`` the active one (see :func:`activate_layer`).

    Returns
    -------
    BoundaryVersion
        The newly active version.
    """
    return activate_layer(session, layer, actor=actor, now=now, **kw).version


def activate_layer(
    session: Session,
    layer: str,
    *,
    actor: str,
    now: datetime,
    min_area_m2: float = 10_000.0,
    tolerance_m: float = 200.0,
    near_border_m: float = 50.0,
) -> ActivationReport:
    """Validate, switch atomically to the staged version ``layer``, and re-dispatch.

    Every open lead (and active monitoring point) whose jurisdiction the new version changes is
    re-assigned and re-routed: its row is updated, a ``dispatches`` row with trigger
    ``boundary_change`` records the new assignment (the receiving body's notice), and an audit
    event records before and after. Closed leads keep their assignment.

    Parameters
    ----------
    session
        Unit of work: the switch, the re-dispatches and the audit events commit together.
    layer
        A staged layer name.
    actor, now
        Who activates, and when.
    min_area_m2
        Validation threshold (see :func:`layers.boundary_review.validate_frame`).
    tolerance_m, near_border_m
        Assignment tolerances, as at intake.

    Returns
    -------
    ActivationReport

    Raises
    ------
    NotFound
        No such layer.
    Conflict
        Not staged, empty, or its validation reports errors (listed).
    """
    from layers.boundary_review import validate_frame

    version = session.scalar(select(BoundaryVersion).where(BoundaryVersion.layer == layer).with_for_update())
    if version is None:
        raise NotFound(f"no boundary layer named {layer!r}", field="layer")
    if version.status == VersionStatus.active.value:
        return ActivationReport(version, None)
    if version.status != VersionStatus.staged.value:
        raise Conflict(f"layer {layer!r} is {version.status}; only a staged layer can be activated "
                       "(use rollback to return to a retired one)")
    count = session.scalar(select(func.count()).where(Jurisdiction.version_id == version.id))
    if not count:
        raise Conflict(f"layer {layer!r} has no jurisdictions; import at least one level first")
    frame = layer_frame(session, version.id)
    _, report = validate_frame(frame, layer=layer, min_area_m2=min_area_m2)
    if not report.ok:
        first = "; ".join(f.message for f in report.errors[:5])
        raise Conflict(f"layer {layer!r} has {len(report.errors)} validation errors and cannot be "
                       f"activated: {first}", field="layer")
    return _switch(session, version, frame, actor=actor, now=now, action="boundaries.activate",
                   tolerance_m=tolerance_m, near_border_m=near_border_m)


def rollback(session: Session, *, actor: str, now: datetime, tolerance_m: float = 200.0,
             near_border_m: float = 50.0) -> ActivationReport:
    """Return to the version that was active before the current one, re-dispatching as on activation.

    Parameters
    ----------
    session
        Unit of work.
    actor, now
        Who rolls back, and when.
    tolerance_m, near_border_m
        Assignment tolerances, as at intake.

    Returns
    -------
    ActivationReport

    Raises
    ------
    Conflict
        No active version, or none retired to return to.
    """
    current = session.scalar(
        select(BoundaryVersion).where(BoundaryVersion.status == VersionStatus.active.value).with_for_update()
    )
    if current is None:
        raise Conflict("no boundary layer is active; nothing to roll back")
    previous = session.scalar(
        select(BoundaryVersion).where(BoundaryVersion.status == VersionStatus.retired.value,
                                      BoundaryVersion.id != current.id)
        .order_by(BoundaryVersion.effective_to.desc(), BoundaryVersion.id.desc()).limit(1)
    )
    if previous is None:
        raise Conflict(f"layer {current.layer!r} is the only version ever activated; nothing to roll back to")
    return _switch(session, previous, layer_frame(session, previous.id), actor=actor, now=now,
                   action="boundaries.rollback", tolerance_m=tolerance_m, near_border_m=near_border_m)


def _switch(session: Session, version: BoundaryVersion, frame: gpd.GeoDataFrame, *, actor: str,
            now: datetime, action: str, tolerance_m: float, near_border_m: float) -> ActivationReport:
    from layers.boundary_review import compute_moves
    from layers.routing import Router

    # Exclusive on the active row before reading any lead: intakes in flight (holding it shared,
    # see IndexCache.get) commit first and are seen below; later ones wait for the switch.
    write_lock(session)
    # Readers that trust a recent check (point lookup) must look again once the switch commits.
    event.listen(session, "after_commit", INDEX_CACHE.expire, once=True)
    previous = session.scalar(
        select(BoundaryVersion).where(BoundaryVersion.status == VersionStatus.active.value).with_for_update()
    )
    index = INDEX_CACHE.for_version(session, version.id, frame)
    # Moves are computed before the switch, inside the same transaction, so the stored
    # assignments compared are exactly the ones the switch replaces.
    leads, points = compute_moves(session, index, Router.load(session), tolerance_m=tolerance_m,
                                  near_border_m=near_border_m)
    if previous is not None:
        session.execute(
            update(BoundaryVersion).where(BoundaryVersion.id == previous.id)
            .values(status=VersionStatus.retired.value, effective_to=now)
        )
    session.execute(
        update(BoundaryVersion).where(BoundaryVersion.id == version.id).values(
            status=VersionStatus.active.value, activated_at=now, activated_by=actor,
            effective_from=now, effective_to=None,
        )
    )
    verb = "activated" if action == "boundaries.activate" else "restored by rollback"
    reason = f"boundary layer {version.layer!r} {verb}" + (f" (was {previous.layer!r})" if previous else "")
    audit.record(session, [audit.EventIn(
        at=now, actor=actor, action=action, entity="boundary_version", entity_id=str(version.id),
        before={"active": previous.layer if previous else None, "version_id": previous.id if previous else None},
        after={"active": version.layer, "version_id": version.id, "leads_moved": leads.count,
               "monitoring_points_moved": points.count},
        reason=reason,
    )])
    _redispatch(session, leads.frame, version.id, actor=actor, now=now, reason=reason)
    _reassign_points(session, points.frame, version.id, actor=actor, now=now, reason=reason)
    session.flush()
    session.refresh(version)
    return ActivationReport(version, previous.layer if previous else None, leads.count, leads.checked,
                            points.count, leads.pairs(), [int(i) for i in leads.frame["id"]])


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def _redispatch(session: Session, moves: pd.DataFrame, version_id: int, *, actor: str, now: datetime,
                reason: str) -> None:
    """Set-based: one executemany UPDATE, one multi-row INSERT of dispatches, one audit batch."""
    if moves.empty:
        return
    t = cast(Table, Lead.__table__)
    stmt = (
        update(t).where(t.c.id == bindparam("b_id")).values(
            city_code=bindparam("b_city"), county_code=bindparam("b_county"),
            township_code=bindparam("b_township"), body_code=bindparam("b_body"),
            boundary_version_id=bindparam("b_version"), routing_rule_id=bindparam("b_rule"),
            routing_fallback=bindparam("b_fallback"), assign_method=bindparam("b_method"),
            assign_reason=bindparam("b_reason"), assign_distance_m=bindparam("b_distance"),
            assign_candidates=bindparam("b_candidates", type_=t.c.assign_candidates.type),
            review=bindparam("b_review"), review_reason=bindparam("b_review_reason"),
            updated_at=bindparam("b_now", type_=t.c.updated_at.type), row_version=t.c.row_version + 1,
        )
    )
    rows: list[dict[str, Any]] = []
    dispatches: list[dict[str, Any]] = []
    events: list[audit.EventIn] = []
    for r in moves.to_dict("records"):
        assigned = r["method"] != "unassigned"
        why = f"{reason}: {r['reason']}"
        review_reason = "; ".join(x for x in (
            "outside service area" if not assigned else ("near a border: check the candidates" if r["candidates"]
                                                         else None),
            r["routing_reason"] if r["routing_fallback"] else None) if x)
        rows.append({
            "b_id": int(r["id"]), "b_city": _none(r["new_city_code"]), "b_county": _none(r["new_county_code"]),
            "b_township": _none(r["new_township_code"]), "b_body": r["new_body"],
            "b_version": version_id if assigned else None, "b_rule": _none(r["routing_rule_id"]),
            "b_fallback": bool(r["routing_fallback"]), "b_method": r["method"], "b_reason": why,
            "b_distance": _none(r["distance_m"]), "b_candidates": list(r["candidates"] or []),
            "b_review": bool(r["review"]), "b_review_reason": review_reason, "b_now": now,
        })
        dispatches.append({
            "lead_id": int(r["id"]), "at": now, "actor": actor, "trigger": "boundary_change",
            "boundary_version_id": version_id if assigned else None, "routing_rule_id": _none(r["routing_rule_id"]),
            "city_code": _none(r["new_city_code"]), "county_code": _none(r["new_county_code"]),
            "township_code": _none(r["new_township_code"]), "body_code": r["new_body"],
            "method": r["method"], "reason": why,
        })
        events.append(audit.EventIn(
            at=now, actor=actor, action="lead.redispatch", entity="lead", entity_id=str(int(r["id"])),
            before={"township_code": _none(r["old_township_code"]), "county_code": _none(r["old_county_code"]),
                    "city_code": _none(r["old_city_code"]), "body_code": _none(r["old_body"])},
            after={"township_code": _none(r["new_township_code"]), "county_code": _none(r["new_county_code"]),
                   "city_code": _none(r["new_city_code"]), "body_code": r["new_body"],
                   "boundary_version_id": version_id, "method": r["method"]},
            reason=reason,
        ))
    # The receiving body and territory are told: one 'redispatch' notice per moved lead, in the
    # same notices table the escalation pass uses (so the body's inbox shows it).
    from layers.workflow.store import WfNotice

    notices = [{
        "dedup_key": f"redispatch:{d['lead_id']}:v{version_id}:{now.isoformat()}"[:120],
        "kind": "redispatch", "level": None, "lead_id": d["lead_id"], "clock_id": None, "node": None,
        "to_body": d["body_code"], "to_jurisdiction": d["township_code"] or d["county_code"],
        "message": f"线索因行政区划调整改派至本单位 / re-dispatched by a boundary change: {d['reason']}"[:2000],
        "created_at": now, "read_at": None,
    } for d in dispatches]
    dispatch_t = Dispatch.metadata.tables[Dispatch.__tablename__]
    notice_t = WfNotice.metadata.tables[WfNotice.__tablename__]
    for start in range(0, len(rows), 5000):
        session.execute(stmt, rows[start:start + 5000])
        session.execute(dispatch_t.insert(), dispatches[start:start + 5000])
        session.execute(notice_t.insert(), notices[start:start + 5000])
    audit.record(session, events)


def _reassign_points(session: Session, moves: pd.DataFrame, version_id: int, *, actor: str, now: datetime,
                     reason: str) -> None:
    if moves.empty:
        return
    t = cast(Table, MonitoringPoint.__table__)
    stmt = update(t).where(t.c.id == bindparam("b_id")).values(
        city_code=bindparam("b_city"), county_code=bindparam("b_county"), township_code=bindparam("b_township"),
        body_code=bindparam("b_body"), boundary_version_id=bindparam("b_version"),
        assign_method=bindparam("b_method"),
    )
    rows = [{"b_id": int(r["id"]), "b_city": _none(r["new_city_code"]), "b_county": _none(r["new_county_code"]),
             "b_township": _none(r["new_township_code"]), "b_body": r["new_body"], "b_version": version_id,
             "b_method": r["method"]} for r in moves.to_dict("records")]
    session.execute(stmt, rows)
    audit.record(session, [audit.EventIn(
        at=now, actor=actor, action="monitoring_point.reassign", entity="monitoring_point",
        entity_id=str(r["b_id"]), before={"township_code": _none(o["old_township_code"]),
                                           "county_code": _none(o["old_county_code"])},
        after={"township_code": r["b_township"], "county_code": r["b_county"], "body_code": r["b_body"]},
        reason=reason) for r, o in zip(rows, moves.to_dict("records"), strict=True)])


def active_version(session: Session) -> BoundaryVersion | None:
    """The active boundary version, if any."""
    return session.scalar(select(BoundaryVersion).where(BoundaryVersion.status == VersionStatus.active.value))


# Which version is active (built once: every lookup and intake batch asks).
_ACTIVE = select(BoundaryVersion.id).where(BoundaryVersion.status == VersionStatus.active.value)
_ACTIVE_FOR_SHARE = _ACTIVE.with_for_update(read=True)


class IndexCache:
    """Per-process cache of boundary indexes: the active version's, and a few recent others.

    :meth:`get` checks which version is active (one indexed query) and rebuilds only when it
    changed, so a worker picks up an activation made elsewhere without a restart.
    """

    def __init__(self, keep: int = 4) -> None:
        self._lock = threading.Lock()
        # Keyed by database URL too: one process may serve (or test) several databases.
        self._indexes: dict[str, tuple[int, BoundaryIndex]] = {}
        self._versions: OrderedDict[tuple[str, int], BoundaryIndex] = OrderedDict()
        self._checked: dict[str, float] = {}  # monotonic time the active version was last read
        self._expired: dict[str, float] = {}  # monotonic time of the last expire()
        self._keep = keep

    def get(self, session: Session, *, for_write: bool = False, max_age: float = 0.0) -> BoundaryIndex | None:
        """The active version's index.

        Parameters
        ----------
        session
            Unit of work on the database whose active version is wanted.
        for_write
            Intake: also hold the active version for the rest of the transaction (a shared row
            lock on PostgreSQL, the write lock on SQLite). Activation and rollback lock the same
            row exclusively, so a lead is either committed before a switch (and re-dispatched by
            it) or assigned against the new version, never lost between them.
        max_age
            Read-only callers (point lookup): trust the last check of which version is active
            for this many seconds instead of asking the database on every call. An activation
            made in this process is seen at once; one made by another worker within ``max_age``.
            Ignored with ``for_write``.

        Returns
        -------
        BoundaryIndex or None
            ``None`` when no version is active.
        """
        key = str(session.get_bind().engine.url)
        if max_age > 0 and not for_write:
            hit = self._indexes.get(key)
            checked = self._checked.get(key)
            if hit is not None and checked is not None and time.monotonic() - checked < max_age:
                return hit[1]
        stmt = _ACTIVE
        if for_write:
            write_lock(session)
            if session.get_bind().dialect.name == "postgresql":
                stmt = _ACTIVE_FOR_SHARE
        checked_at = time.monotonic()
        conn = session.connection()
        vid = conn.execute(stmt).scalar()
        if vid is None and for_write:
            # Waiting on a switch that then committed finds the old row no longer active;
            # a fresh statement sees the new one.
            vid = conn.execute(stmt).scalar()
        if vid is None:
            self._checked.pop(key, None)
            return None
        hit = self._indexes.get(key)
        if hit is None or hit[0] != vid:
            with self._lock:
                hit = self._indexes.get(key)
                if hit is None or hit[0] != vid:
                    index = self.for_version(session, vid)
                    hit = self._indexes[key] = (vid, index)
        if self._expired.get(key, 0.0) <= checked_at:
            self._checked[key] = checked_at
        return hit[1]

    def expire(self, session: Session) -> None:
        """Make the next :meth:`get` ask the database which version is active.

        Called when an activation or rollback commits, so this process sees the switch at once
        even where callers pass ``max_age``.
        """
        key = str(session.get_bind().engine.url)
        with self._lock:
            self._checked.pop(key, None)
            self._expired[key] = time.monotonic()

    def for_version(self, session: Session, version_id: int, frame: gpd.GeoDataFrame | None = None) -> BoundaryIndex:
        """The index of any version (history queries, activation), built once per process."""
        key = (str(session.get_bind().engine.url), int(version_id))
        hit = self._versions.get(key)
        # A frame given means "build from this": a staged version may have gained a level since.
        if hit is not None and frame is None:
            self._versions.move_to_end(key)
            return hit
        index = BoundaryIndex.build(layer_frame(session, version_id) if frame is None else frame,
                                    version=str(version_id))
        self._versions[key] = index
        while len(self._versions) > self._keep:
            self._versions.popitem(last=False)
        return index

    def clear(self) -> None:
        with self._lock:
            self._indexes.clear()
            self._versions.clear()
            self._checked.clear()
            self._expired.clear()


INDEX_CACHE = IndexCache()


def list_active(session: Session, *, level: str | None = None, parent: str | None = None) -> list[Jurisdiction]:
    """Jurisdictions of the active version, by code."""
    version = active_version(session)
    if version is None:
        return []
    stmt = select(Jurisdiction).where(Jurisdiction.version_id == version.id).order_by(Jurisdiction.code)
    if level:
        stmt = stmt.where(Jurisdiction.level == level)
    if parent:
        stmt = stmt.where(Jurisdiction.parent_code == parent)
    return list(session.scalars(stmt))


def list_versions(session: Session) -> list[BoundaryVersion]:
    """Every boundary version, oldest first."""
    return list(session.scalars(select(BoundaryVersion).order_by(BoundaryVersion.id)))


# ------------------------------------------------------------------------------ history


@dataclass(frozen=True)
class Period:
    """A stretch of time during which one version was in force (``end`` None: still is)."""

    version_id: int
    layer: str
    start: datetime
    end: datetime | None


def activation_periods(session: Session) -> list[Period]:
    """Every period any version was in force, oldest first, from the audit chain.

    Versions activated without an audit event (none should be) fall back to their
    ``effective_from`` / ``effective_to``.
    """
    events = session.execute(
        select(AuditEvent.entity_id, AuditEvent.at).where(
            AuditEvent.entity == "boundary_version", AuditEvent.action.in_(ACTIVATION_ACTIONS)
        ).order_by(AuditEvent.seq)
    ).all()
    layers = {v.id: v for v in list_versions(session)}
    periods: list[Period] = []
    for k, (vid, at) in enumerate(events):
        v = layers.get(int(vid))
        if v is None:
            continue
        end = events[k + 1].at if k + 1 < len(events) else (None if v.status == "active" else v.effective_to)
        periods.append(Period(v.id, v.layer, at, end))
    seen = {p.version_id for p in periods}
    for v in layers.values():
        if v.id not in seen and v.effective_from is not None:
            periods.append(Period(v.id, v.layer, v.effective_from, v.effective_to))
    return sorted(periods, key=lambda p: p.start)


def version_at(session: Session, at: datetime) -> BoundaryVersion | None:
    """The version in force at ``at`` (``None`` before the first activation)."""
    hit = None
    for p in activation_periods(session):
        if p.start <= at and (p.end is None or at < p.end):
            hit = p  # later periods win: a period opened by a rollback is nested in an older one
    return session.get(BoundaryVersion, hit.version_id) if hit else None


def township_at(session: Session, lon: float, lat: float, *, at: datetime, datum: str = "wgs84",
                tolerance_m: float = 200.0, near_border_m: float = 50.0) -> dict[str, Any]:
    """Which city, county and township held a point on a date.

    Parameters
    ----------
    session
        Any session.
    lon, lat
        The point, in ``datum``.
    at
        The moment asked about (aware).
    datum
        ``wgs84``, ``cgcs2000``, ``gcj02`` or ``bd09``.
    tolerance_m, near_border_m
        Assignment tolerances.

    Returns
    -------
    dict
        :func:`geo.assign.lookup`'s answer plus ``layer``, ``version_id`` and ``at``.
    """
    version = version_at(session, at)
    if version is None:
        raise NotFound(f"no boundary layer was in force at {at.isoformat()}", field="at")
    x, y = gcrs.to_storage(np.array([lon]), np.array([lat]), datum)
    index = INDEX_CACHE.for_version(session, version.id)
    res = lookup_point(index, float(x[0]), float(y[0]), tolerance_m=tolerance_m, near_border_m=near_border_m)
    return {**res, "layer": version.layer, "version_id": version.id, "at": at.isoformat()}


def lead_history(session: Session, principal: Any, ref: str) -> dict[str, Any]:
    """A lead's jurisdiction when received, now, and every dispatch in between.

    Parameters
    ----------
    session
        Any session.
    principal
        The caller (scope applies: an out-of-scope lead is :class:`NotFound`).
    ref
        Lead code or id.

    Returns
    -------
    dict
        ``lead``, ``received_at``, ``at_receipt`` (the dispatch in force when received),
        ``current`` and ``dispatches`` (oldest first).
    """
    from layers.leads import get_lead

    lead = get_lead(session, principal, ref)
    rows = list(session.scalars(select(Dispatch).where(Dispatch.lead_id == lead.id).order_by(Dispatch.id)))
    names = {v.id: v.layer for v in list_versions(session)}

    def one(d: Dispatch) -> dict[str, Any]:
        return {"at": d.at.isoformat(), "trigger": d.trigger, "actor": d.actor,
                "boundary_version_id": d.boundary_version_id,
                "layer": names.get(d.boundary_version_id) if d.boundary_version_id else None,
                "city_code": d.city_code, "county_code": d.county_code, "township_code": d.township_code,
                "body_code": d.body_code, "method": d.method, "reason": d.reason}

    at_receipt = [d for d in rows if d.at <= lead.received_at] or rows[:1]
    return {
        "lead": lead.code, "status": lead.status, "received_at": lead.received_at.isoformat(),
        "at_receipt": one(at_receipt[-1]) if at_receipt else None,
        "current": {"city_code": lead.city_code, "county_code": lead.county_code,
                    "township_code": lead.township_code, "body_code": lead.body_code,
                    "boundary_version_id": lead.boundary_version_id},
        "dispatches": [one(d) for d in rows],
    }

