"""Versioned boundary layers: import as a staged version, activate, and the assignment index.

A *layer* is one generation of boundaries (MapIt's idea): imports with the same layer name add
levels to one staged version until it is activated; activation is one atomic switch. The
in-memory :class:`geo.assign.BoundaryIndex` of the active version is cached per process and
rebuilt when another process activates a new version.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from geo import crs as gcrs
from geo.assign import BoundaryIndex, check_hierarchy
from layers import audit
from layers.errors import Conflict, Invalid, NotFound
from layers.models import BoundaryVersion, Jurisdiction, Level, VersionStatus
from layers.shapes import as_multipolygon, from_shape, wkb_array_to_shapes

LEVEL_ORDER = [Level.city.value, Level.county.value, Level.township.value]
SUPPORTED = (".geojson", ".json", ".zip", ".gpkg", ".shp")


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


def _parse_mapping(mapping: Mapping[str, str] | str) -> dict[str, str]:
    if isinstance(mapping, str):
        out: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in mapping.split(","))):
            if "=" not in part:
                raise Invalid("--map", part, "target=FIELD pairs such as code=adcode,name=name")
            k, v = (s.strip() for s in part.split("=", 1))
            out[k] = v
        mapping = out
    allowed = {"code", "name", "parent"}
    for k in mapping:
        if k not in allowed:
            raise Invalid("--map", k, f"targets are {', '.join(sorted(allowed))}")
    for need in ("code", "name"):
        if need not in mapping:
            raise Invalid("--map", dict(mapping), f"must map {need}=FIELD")
    return dict(mapping)


def read_layer(path: Path, *, layer: str | None = None, encoding: str | None = None) -> gpd.GeoDataFrame:
    """Read GeoJSON, zipped Shapefile, Shapefile or GeoPackage with pyogrio.

    Parameters
    ----------
    path
        The file.
    layer
        Layer name inside a GeoPackage (default: the first).
    encoding
        Attribute encoding for Shapefiles without a ``.cpg`` (for example ``gbk``).

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
    if encoding:
        kw["encoding"] = encoding
    try:
        return gpd.read_file(path, **kw)
    except Exception as exc:  # pyogrio raises several types; the user needs the file and cause
        raise Invalid("path", path.name, f"a readable vector file ({exc})") from exc


def _to_storage(gdf: gpd.GeoDataFrame, datum: str) -> gpd.GeoSeries:
    d = gcrs.parse_datum(datum)
    geoms = gdf.geometry
    if gdf.crs is not None and gdf.crs.is_projected:
        # Gauss-Krüger and other projected inputs: unproject to lon/lat first.
        geoms = geoms.to_crs(4326)
    elif gdf.crs is not None and gdf.crs.to_epsg() not in (4326, 4490, None):
        geoms = geoms.to_crs(4326)
    out = gcrs.geometry_to_storage(np.asarray(geoms.values, dtype=object), d)
    return gpd.GeoSeries(out, crs=4326, index=gdf.index)


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
    best = frame.drop_duplicates("c")
    areas = shapely.area(c.geometry.values)
    out = []
    for ci in range(len(c)):
        hit = best[best.c == ci]
        if hit.empty:
            out.append({"code": children.code.iloc[ci], "parent": None, "share": 0.0})
        else:
            pi = int(hit.p.iloc[0])
            out.append({
                "code": children.code.iloc[ci],
                "parent": parents.code.iloc[pi],
                "share": round(float(hit.a.iloc[0] / areas[ci]), 4) if areas[ci] else 0.0,
            })
    return out


def import_layer(
    session: Session,
    path: Path,
    *,
    level: str,
    datum: str,
    mapping: Mapping[str, str] | str,
    layer: str,
    actor: str,
    now: datetime,
    gpkg_layer: str | None = None,
    encoding: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import one level of a boundary file into the staged version ``layer``.

    Everything is checked before anything is written; any error leaves no half-imported
    version (the caller's unit of work rolls back).

    Parameters
    ----------
    session
        Unit of work.
    path
        GeoJSON, zipped Shapefile or GeoPackage.
    level
        ``city``, ``county`` or ``township``.
    datum
        The datum of the file's coordinates: ``wgs84``, ``cgcs2000``, ``gcj02`` or ``bd09``.
        Projected files (e.g. CGCS2000 Gauss-Krüger) are unprojected first.
    mapping
        ``code=FIELD,name=FIELD[,parent=FIELD]``.
    layer
        Name of the staged version to add this level to.
    actor, now
        Who imports, and when (audited).
    gpkg_layer, encoding
        GeoPackage layer name; attribute encoding for Shapefiles without ``.cpg``.
    progress
        Called with (done, total) while rows are written.

    Returns
    -------
    ImportReport
    """
    if level not in LEVEL_ORDER:
        raise Invalid("level", level, f"one of {', '.join(LEVEL_ORDER)}")
    fields = _parse_mapping(mapping)
    gdf = read_layer(Path(path), layer=gpkg_layer, encoding=encoding)
    if gdf.empty:
        raise Invalid("path", Path(path).name, "a layer with at least one feature")
    for target, column in fields.items():
        if column not in gdf.columns:
            fields_in_file = ", ".join(map(str, gdf.columns.drop("geometry")))
            raise Invalid(f"--map {target}", column, f"a field of the file: {fields_in_file}")

    frame = gpd.GeoDataFrame(
        {
            "code": gdf[fields["code"]].map(_text),
            "name": gdf[fields["name"]].map(_text),
            "parent_code": gdf[fields["parent"]].map(lambda v: _text(v) or None) if "parent" in fields else None,
            "level": level,
        },
        geometry=gdf.geometry,
        crs=gdf.crs,
    )
    _check_features(frame)
    frame = frame.set_geometry(_to_storage(frame, datum))
    frame["geometry"] = [as_multipolygon(g) for g in frame.geometry.values]

    version = _get_or_create_staged(session, layer, datum, Path(path).name, actor)
    existing = layer_frame(session, version.id)
    if (existing.level == level).any():
        raise Conflict(f"layer {layer!r} already has a {level} level; use a new layer name", field="level")
    dup = sorted(set(existing.code) & set(frame.code))
    if dup:
        raise Invalid("code", dup[:5], "codes not already in this layer")

    bounds = tuple(frame.total_bounds)
    metric = gcrs.metric_crs_for(bounds)
    report = ImportReport(layer=layer, version_id=version.id, level=level, features=len(frame))
    upper = LEVEL_ORDER[LEVEL_ORDER.index(level) - 1] if level != "city" else None
    upper_rows = existing[existing.level == upper] if upper else existing.iloc[0:0]
    if upper and "parent" not in fields and not upper_rows.empty:
        inferred = _infer_parents(frame, upper_rows, metric)
        frame["parent_code"] = [r["parent"] for r in inferred]
        report.parents_inferred = inferred
        weak = [r for r in inferred if r["share"] < 0.9]
        for r in weak:
            report.warnings.append(
                f"{r['code']}: parent {r['parent']} holds only {r['share']:.0%} of its area"
            )
    combined = pd.concat([existing, frame.drop(columns=[])], ignore_index=True)
    try:
        check_hierarchy(gpd.GeoDataFrame(combined, geometry="geometry", crs=4326))
    except ValueError as exc:
        raise Invalid("parent", str(exc), "parents that are jurisdictions of the level above in this layer") from exc

    areas = shapely.area(gpd.GeoSeries(frame.geometry.values, crs=4326).to_crs(metric).values) / 1e6
    rows = []
    for i, (code, name, parent, geom) in enumerate(
        zip(frame.code, frame.name, frame.parent_code, frame.geometry.values, strict=True)
    ):
        rows.append({
            "version_id": version.id, "code": code, "name": name, "level": level,
            "parent_code": parent, "area_km2": float(areas[i]), "geom": from_shape(geom),
        })
    chunk = 200
    for start in range(0, len(rows), chunk):
        session.execute(insert(Jurisdiction), rows[start:start + chunk])
        if progress:
            progress(min(start + chunk, len(rows)), len(rows))
    audit.record(session, [audit.EventIn(
        at=now, actor=actor, action="boundaries.import", entity="boundary_version",
        entity_id=str(version.id), before={},
        after={"layer": layer, "level": level, "features": len(rows), "datum": datum,
               "source": Path(path).name},
    )])
    return report


def _text(value: Any) -> str:
    """A code or name as text: integers read from a file lose their '.0', blanks become ''."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _check_features(frame: gpd.GeoDataFrame) -> None:
    """Reject a file whose features cannot be jurisdictions, naming the first problems."""
    problems: list[str] = []
    for i, (code, name, geom) in enumerate(zip(frame.code, frame.name, frame.geometry.values, strict=True)):
        label = f"feature {i} (code {code!r})"
        if not code:
            problems.append(f"feature {i}: empty code")
        if not name:
            problems.append(f"{label}: empty name")
        if geom is None or geom.is_empty:
            problems.append(f"{label}: no geometry")
        elif geom.geom_type not in ("Polygon", "MultiPolygon"):
            problems.append(f"{label}: geometry is {geom.geom_type}, expected Polygon or MultiPolygon")
        elif not geom.is_valid:
            problems.append(f"{label}: invalid geometry: {shapely.is_valid_reason(geom)}")
    codes = frame.code[frame.code != ""]
    for code in sorted(set(codes[codes.duplicated()])):
        problems.append(f"code {code!r} appears more than once")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise Invalid("features", "; ".join(problems[:10]) + more, "valid, uniquely coded polygons")


def activate(session: Session, layer: str, *, actor: str, now: datetime) -> BoundaryVersion:
    """Make the staged version ``layer`` the active one, retiring the current one, atomically.

    Parameters
    ----------
    session
        Unit of work (the switch commits with its audit event).
    layer
        A staged layer name.
    actor, now
        Who activates, and when.

    Returns
    -------
    BoundaryVersion
        The newly active version.
    """
    version = session.scalar(select(BoundaryVersion).where(BoundaryVersion.layer == layer).with_for_update())
    if version is None:
        raise NotFound(f"no boundary layer named {layer!r}", field="layer")
    if version.status == VersionStatus.active.value:
        return version
    if version.status != VersionStatus.staged.value:
        raise Conflict(f"layer {layer!r} is {version.status}; only a staged layer can be activated")
    count = session.scalar(select(func.count()).where(Jurisdiction.version_id == version.id))
    if not count:
        raise Conflict(f"layer {layer!r} has no jurisdictions; import at least one level first")
    previous = session.scalar(select(BoundaryVersion).where(BoundaryVersion.status == VersionStatus.active.value))
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
    audit.record(session, [audit.EventIn(
        at=now, actor=actor, action="boundaries.activate", entity="boundary_version",
        entity_id=str(version.id),
        before={"active": previous.layer if previous else None}, after={"active": layer},
    )])
    session.flush()
    session.refresh(version)
    return version


def active_version(session: Session) -> BoundaryVersion | None:
    """The active boundary version, if any."""
    return session.scalar(select(BoundaryVersion).where(BoundaryVersion.status == VersionStatus.active.value))


class IndexCache:
    """Per-process cache of the active version's :class:`BoundaryIndex`.

    Each call checks which version is active (one indexed query) and rebuilds only when it
    changed, so a worker picks up an activation made elsewhere without a restart.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Keyed by database URL too: one process may serve (or test) several databases.
        self._indexes: dict[str, tuple[int, BoundaryIndex]] = {}

    def get(self, session: Session) -> BoundaryIndex | None:
        vid = session.scalar(
            select(BoundaryVersion.id).where(BoundaryVersion.status == VersionStatus.active.value)
        )
        if vid is None:
            return None
        key = str(session.get_bind().engine.url)
        hit = self._indexes.get(key)
        if hit is None or hit[0] != vid:
            with self._lock:
                hit = self._indexes.get(key)
                if hit is None or hit[0] != vid:
                    index = BoundaryIndex.build(layer_frame(session, vid), version=str(vid))
                    hit = self._indexes[key] = (vid, index)
        return hit[1]

    def clear(self) -> None:
        with self._lock:
            self._indexes.clear()


INDEX_CACHE = IndexCache()


def geocoder_for(session: Session) -> Any:
    """An address resolver over the active version's names (``None`` until geocoding lands)."""
    return None


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
