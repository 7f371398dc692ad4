"""Review of a boundary layer before it goes live: validation report, diff and preview.

Two questions GIS staff must answer before activating a layer:

* **Is it sound?** :func:`validate_frame` / :func:`validate_version` return a
  :class:`ValidationReport`: invalid geometries with location and reason, sibling overlaps and
  sliver gaps above an area threshold (with where), children not nested in their parent (share
  outside), missing / duplicate codes, unknown parents, empty geometries, multi-level mix-ups
  and implausible areas. *Errors* block activation; *warnings* do not. Repair
  (``shapely.make_valid``) happens only when asked for, and every repair is reported.
* **What would it change?** :func:`preview` diffs a staged version against the active one
  (added / removed / changed jurisdictions, geometry change measured by the area of the
  symmetric difference) and re-runs :func:`geo.assign.assign` over the stored points of every
  open lead and active monitoring point, reporting exactly which would change jurisdiction or
  responsible body, with counts per old → new pair.

Areas and distances are computed in :func:`geo.crs.metric_crs_for` of the layer's bounds.
Everything is vectorised: sibling pairs come from one ``STRtree`` query per level, and lead
points are streamed from the database in large partitions and assigned as arrays.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from geo import crs as gcrs
from geo.assign import BoundaryIndex
from geo.assign import assign as assign_points
from layers.errors import Invalid, NotFound
from layers.models import AssignMethod, BoundaryVersion, Lead, MonitoringPoint, VersionStatus
from layers.routing import Router

LEVELS = ("city", "county", "township")
# Plausible area per level, km² (warnings only). Wide on purpose: Chinese counties range from a
# ~10 km² urban district to Xinjiang counties of 200,000 km²; a value outside these bounds almost
# always means a wrong CRS, a wrong unit or a feature of another level.
PLAUSIBLE_KM2 = {"city": (20.0, 500_000.0), "county": (1.0, 250_000.0), "township": (0.05, 50_000.0)}
# A sibling that holds this share of another sibling is not an overlap but a feature of another
# level (a county file that also contains its city polygon, say).
MIXUP_SHARE = 0.9
# Assignment methods the boundary change may redo; manual and by-address choices stay.
REASSIGNABLE = (AssignMethod.inside.value, AssignMethod.border.value, AssignMethod.nearest.value,
                AssignMethod.unassigned.value)
MONITORING_CATEGORY = "exceedance"


class Severity(StrEnum):
    """Errors block activation; warnings and repairs are reported only."""

    error = "error"
    warning = "warning"
    repaired = "repaired"


@dataclass
class Finding:
    """One problem of a layer, with where it is (storage lon/lat) when it has a place."""

    severity: str
    kind: str
    message: str
    codes: list[str] = field(default_factory=list)
    area_m2: float | None = None
    lon: float | None = None
    lat: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity, "kind": self.kind, "message": self.message,
            "codes": self.codes,
            "area_m2": None if self.area_m2 is None else round(self.area_m2, 1),
            "lon": None if self.lon is None else round(self.lon, 6),
            "lat": None if self.lat is None else round(self.lat, 6),
        }


@dataclass
class ValidationReport:
    """Every finding of one layer; :attr:`ok` is false when any error blocks activation."""

    layer: str
    features: int
    metric_crs: str
    min_area_m2: float
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.error]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.warning]

    @property
    def repairs(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.repaired]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, dict[str, int]]:
        """``{severity: {kind: n}}``."""
        out: dict[str, dict[str, int]] = {}
        for f in self.findings:
            out.setdefault(f.severity, {}).setdefault(f.kind, 0)
            out[f.severity][f.kind] += 1
        return out

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        """JSON-ready report; ``limit`` caps the findings listed (counts stay complete)."""
        shown = self.findings if limit is None else self.findings[:limit]
        return {
            "layer": self.layer, "features": self.features, "ok": self.ok,
            "metric_crs": self.metric_crs, "min_area_m2": self.min_area_m2,
            "errors": len(self.errors), "warnings": len(self.warnings),
            "repairs": len(self.repairs), "counts": self.counts(),
            "findings": [f.to_dict() for f in shown],
            "findings_omitted": len(self.findings) - len(shown),
        }

    def to_text(self, limit: int = 50) -> str:
        """Human-readable report, errors first."""
        verdict = "OK: can be activated" if self.ok else "BLOCKED: errors must be fixed before activation"
        lines = [
            f"layer {self.layer}: {self.features} features; {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings, {len(self.repairs)} repairs — {verdict}",
            f"areas in {self.metric_crs}; overlaps and gaps below {self.min_area_m2:g} m² ignored",
        ]
        for sev, kinds in sorted(self.counts().items()):
            lines.append(f"  {sev}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        order = {Severity.error: 0, Severity.warning: 1, Severity.repaired: 2}
        ranked = sorted(self.findings, key=lambda f: (order.get(Severity(f.severity), 3), f.kind))
        for f in ranked[:limit]:
            where = f" at {f.lon:.6f},{f.lat:.6f}" if f.lon is not None and f.lat is not None else ""
            area = f" ({f.area_m2:,.0f} m²)" if f.area_m2 is not None else ""
            lines.append(f"{f.severity.upper():8} {f.kind:18} {f.message}{area}{where}")
        if len(ranked) > limit:
            lines.append(f"… and {len(ranked) - limit} more (see the JSON report)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ validation


_WHERE = re.compile(r"\[\s*(-?[\d.eE+-]+)\s+(-?[\d.eE+-]+)")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == ""


def _pt(geom: Any) -> tuple[float | None, float | None]:
    if geom is None or shapely.is_empty(geom):
        return None, None
    p = shapely.point_on_surface(geom) if shapely.get_type_id(geom) in (3, 6) else shapely.centroid(geom)
    return float(p.x), float(p.y)


def validate_frame(
    frame: gpd.GeoDataFrame,
    *,
    layer: str = "",
    min_area_m2: float = 10_000.0,
    max_outside_share: float = 0.5,
    repair: bool = False,
) -> tuple[gpd.GeoDataFrame, ValidationReport]:
    """Validate a jurisdiction layer (all levels of one version) and report every finding.

    Parameters
    ----------
    frame : geopandas.GeoDataFrame
        Columns ``code``, ``name``, ``level``, ``parent_code`` and polygon geometry in storage
        lon/lat (EPSG:4326).
    layer : str
        Name shown in the report.
    min_area_m2 : float, default 10,000 (1 ha)
        Overlaps, gaps and parts outside the parent smaller than this are ignored (digitising
        noise); larger ones are reported with their area and a representative point.
    max_outside_share : float, default 0.5
        A child with more than this share of its area outside its parent is an error (its
        parent code is probably wrong); a smaller part outside above ``min_area_m2`` is a
        warning: assignment takes ancestors from parent codes, so dispatch stays consistent
        (real layers do this, e.g. NYC community districts reaching into the water beyond
        their borough's shoreline).
    repair : bool, default False
        Repair invalid geometries with ``shapely.make_valid`` (keeping the polygonal parts)
        and report each repair, instead of reporting them as errors.

    Returns
    -------
    (geopandas.GeoDataFrame, ValidationReport)
        The frame (repaired geometries substituted when ``repair``) and the report.
    """
    if not min_area_m2 >= 0:
        raise Invalid("min_area_m2", min_area_m2, "a non-negative area in m²")
    missing = [c for c in ("code", "name", "level", "parent_code", "geometry") if c not in frame.columns]
    if missing:
        raise Invalid("columns", missing, "code, name, level, parent_code and geometry")
    frame = frame.reset_index(drop=True).copy()
    findings: list[Finding] = []
    geoms = np.asarray(frame.geometry.values, dtype=object)
    codes = ["" if _blank(c) else str(c) for c in frame["code"]]
    frame["code"] = codes

    usable = _check_geometries(frame, geoms, codes, findings, repair)
    frame["geometry"] = geoms
    _check_codes(frame, codes, geoms, findings)
    ok_geoms = geoms[usable]
    bounds = shapely.total_bounds(ok_geoms) if usable.any() else np.array([116.0, 34.0, 118.0, 35.0])
    if not (np.all(np.isfinite(bounds)) and -180 <= bounds[0] <= bounds[2] <= 180
            and -90 <= bounds[1] <= bounds[3] <= 90):
        raise Invalid("geometry", [round(float(b), 3) for b in bounds],
                      "storage lon/lat degrees; declare the file's CRS (e.g. --crs EPSG:4527)")
    metric = gcrs.metric_crs_for(tuple(float(b) for b in bounds))  # type: ignore[arg-type]
    crs_name = metric.name if metric.name != "unknown" else metric.to_proj4()
    report = ValidationReport(layer=layer, features=len(frame), metric_crs=crs_name,
                              min_area_m2=float(min_area_m2), findings=findings)
    if not usable.any():
        return frame, report
    to_m = gcrs.transformer(gcrs.STORAGE_CRS, metric)
    metric_geoms = np.empty(len(frame), dtype=object)
    metric_geoms[usable] = _project(ok_geoms, to_m)
    # Every feature is tested against its neighbours many times: prepared geometries make the
    # predicates several times faster.
    shapely.prepare(ok_geoms)
    ctx = _Ctx(frame, codes, usable, geoms, metric_geoms, to_m, float(min_area_m2), findings)
    _check_hierarchy(ctx)
    _check_areas(ctx)
    _check_siblings(ctx)
    _check_nesting(ctx, max_outside_share)
    _check_gaps(ctx)
    return frame, report


@dataclass
class _Ctx:
    frame: gpd.GeoDataFrame
    codes: list[str]
    usable: np.ndarray
    # Topology (intersections, differences, unions) runs on the storage lon/lat geometries, where
    # shared vertices coincide exactly; only the measures use the metric CRS. Projecting first
    # would bend shared edges differently (a long edge vs the same edge split in two) and
    # invent slivers.
    g: np.ndarray
    mg: np.ndarray  # metric geometries of the features (None where unusable)
    to_m: pyproj.Transformer
    min_area: float
    findings: list[Finding]

    def where(self, geom: Any) -> tuple[float | None, float | None]:
        return _pt(geom)

    def area(self, geoms: Any) -> np.ndarray:
        arr = np.atleast_1d(np.asarray(geoms, dtype=object))
        return np.asarray(shapely.area(_project(arr, self.to_m)), dtype=float)


def _project(geoms: np.ndarray, tr: pyproj.Transformer) -> np.ndarray:
    def fwd(c: np.ndarray) -> np.ndarray:
        x, y = tr.transform(c[:, 0], c[:, 1])
        return np.column_stack([x, y])

    return np.asarray(shapely.transform(geoms, fwd), dtype=object)


def _check_geometries(frame: gpd.GeoDataFrame, geoms: np.ndarray, codes: list[str],
                      findings: list[Finding], repair: bool) -> np.ndarray:
    """Empty / non-polygon / invalid geometries; returns the mask of usable polygons."""
    none = np.array([g is None for g in geoms])
    geoms[none] = shapely.Polygon()
    empty = shapely.is_empty(geoms)
    types = shapely.get_type_id(geoms)
    polygonal = np.isin(types, [3, 6]) & ~empty
    for i in np.flatnonzero(empty):
        findings.append(Finding(Severity.error, "empty_geometry", f"{codes[i] or f'feature {i}'}: no geometry",
                                [codes[i]]))
    for i in np.flatnonzero(~empty & ~polygonal):
        lon, lat = _pt(geoms[i])
        findings.append(Finding(Severity.error, "wrong_geometry_type",
                                f"{codes[i] or f'feature {i}'}: geometry is {geoms[i].geom_type}, "
                                "expected Polygon or MultiPolygon", [codes[i]], lon=lon, lat=lat))
    valid = shapely.is_valid(geoms)
    bad = np.flatnonzero(polygonal & ~valid)
    usable = polygonal & valid
    if bad.size:
        reasons = shapely.is_valid_reason(geoms[bad])
        for j, reason in zip(bad.tolist(), reasons.tolist(), strict=True):
            m = _WHERE.search(reason)
            lon, lat = (float(m.group(1)), float(m.group(2))) if m else _pt(shapely.envelope(geoms[j]))
            label = f"feature {j} (code {codes[j]!r})"
            if repair:
                fixed = _polygonal(shapely.make_valid(geoms[j]))
                if fixed is not None:
                    geoms[j] = fixed
                    usable[j] = True
                    findings.append(Finding(Severity.repaired, "invalid_geometry",
                                            f"{label}: invalid geometry: {reason}; repaired with make_valid",
                                            [codes[j]], lon=lon, lat=lat))
                    continue
            findings.append(Finding(Severity.error, "invalid_geometry", f"{label}: invalid geometry: {reason}",
                                    [codes[j]], lon=lon, lat=lat))
    return usable


def _polygonal(geom: Any) -> Any:
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return None
    out = shapely.union_all(parts)
    return out if not out.is_empty else None


def _check_codes(frame: gpd.GeoDataFrame, codes: list[str], geoms: np.ndarray,
                 findings: list[Finding]) -> None:
    for i, c in enumerate(codes):
        if not c:
            lon, lat = _pt(geoms[i])
            findings.append(Finding(Severity.error, "missing_code", f"feature {i}: empty code",
                                    [], lon=lon, lat=lat))
    counts = pd.Series([c for c in codes if c]).value_counts()
    for c, n in counts[counts > 1].items():
        findings.append(Finding(Severity.error, "duplicate_code", f"code {c} appears {n} times", [str(c)]))
    for i, (c, name) in enumerate(zip(codes, frame["name"], strict=True)):
        if _blank(name):
            findings.append(Finding(Severity.error, "missing_name", f"{c or f'feature {i}'}: empty name", [c]))
    levels = [str(v) for v in frame["level"]]
    for i, lv in enumerate(levels):
        if lv not in LEVELS:
            findings.append(Finding(Severity.error, "unknown_level",
                                    f"{codes[i]}: level {lv!r}; allowed: {', '.join(LEVELS)}", [codes[i]]))
    # Administrative codes of one level have one length (6 digits for counties, 9 or 12 for
    # townships); a mix usually means features of two levels in one file.
    for lv in LEVELS:
        lens = pd.Series([len(c) for c, x in zip(codes, levels, strict=True) if x == lv and c])
        if lens.nunique() > 1:
            common = int(lens.mode().iloc[0])
            odd = [c for c, x in zip(codes, levels, strict=True) if x == lv and c and len(c) != common]
            findings.append(Finding(Severity.warning, "mixed_code_length",
                                    f"{lv} codes have lengths {sorted(set(lens.tolist()))}; "
                                    f"{len(odd)} differ from {common} (first: {', '.join(odd[:5])})", odd[:20]))


def _check_hierarchy(ctx: _Ctx) -> None:
    levels = [str(v) for v in ctx.frame["level"]]
    present = set(levels)
    level_of = {c: lv for c, lv in zip(ctx.codes, levels, strict=True) if c}
    for i, (code, lv, parent) in enumerate(zip(ctx.codes, levels, ctx.frame["parent_code"], strict=True)):
        if lv not in LEVELS or lv == "city":
            continue
        up = LEVELS[LEVELS.index(lv) - 1]
        p = None if _blank(parent) else str(parent)
        lon, lat = ctx.where(ctx.g[i]) if ctx.usable[i] else (None, None)
        if p is not None and p == code:
            # Directly administered county-level units (东莞, 中山, 省直辖县) often name
            # themselves as parent in published layers: odd, harmless when the city is absent.
            sev = Severity.error if up in present else Severity.warning
            ctx.findings.append(Finding(sev, "self_parent", f"{code} ({lv}) names itself as parent",
                                        [code], lon=lon, lat=lat))
        elif p is not None and p in level_of and level_of[p] != up:
            ctx.findings.append(Finding(Severity.error, "level_mixup",
                                        f"{code} ({lv}) has parent {p}, a {level_of[p]}; expected a {up}",
                                        [code, p], lon=lon, lat=lat))
        elif up in present and p is None:
            ctx.findings.append(Finding(Severity.error, "missing_parent",
                                        f"{code} ({lv}) names no parent; the layer has a {up} level",
                                        [code], lon=lon, lat=lat))
        elif up in present and p not in level_of:
            ctx.findings.append(Finding(Severity.error, "unknown_parent",
                                        f"{code} ({lv}) names parent {p}, which is not a {up} of this layer",
                                        [code, str(p)], lon=lon, lat=lat))


def _check_areas(ctx: _Ctx) -> None:
    levels = ctx.frame["level"].astype(str).to_numpy()
    idx = np.flatnonzero(ctx.usable)
    km2 = shapely.area(ctx.mg[idx]) / 1e6
    for i, a in zip(idx.tolist(), km2.tolist(), strict=True):
        lo, hi = PLAUSIBLE_KM2.get(levels[i], (0.0, float("inf")))
        if not lo <= a <= hi:
            lon, lat = ctx.where(ctx.g[i])
            ctx.findings.append(Finding(
                Severity.warning, "implausible_area",
                f"{ctx.codes[i]} ({levels[i]}) covers {a:,.3f} km²; plausible for a {levels[i]}: "
                f"{lo:g}–{hi:,.0f} km² (wrong CRS, unit or level?)", [ctx.codes[i]],
                area_m2=a * 1e6, lon=lon, lat=lat))


def _check_siblings(ctx: _Ctx) -> None:
    """Overlaps between jurisdictions of one level, and siblings that contain each other."""
    levels = ctx.frame["level"].astype(str).to_numpy()
    for lv in LEVELS:
        idx = np.flatnonzero(ctx.usable & (levels == lv))
        if idx.size < 2:
            continue
        g = ctx.g[idx]
        tree = shapely.STRtree(g)
        a, b = tree.query(g, predicate="intersects")
        keep = a < b
        a, b = a[keep], b[keep]
        if a.size == 0:
            continue
        # Pairs that merely touch along an edge are the common case; skip them cheaply.
        inner = shapely.overlaps(g[a], g[b]) | shapely.contains(g[a], g[b]) | shapely.contains(g[b], g[a])
        a, b = a[inner], b[inner]
        if a.size == 0:
            continue
        inter = shapely.intersection(g[a], g[b])
        area = ctx.area(inter)
        feature_m2 = shapely.area(ctx.mg[idx])
        smaller = np.minimum(feature_m2[a], feature_m2[b])
        big = area > ctx.min_area
        for k in np.flatnonzero(big):
            ca, cb = ctx.codes[idx[a[k]]], ctx.codes[idx[b[k]]]
            lon, lat = ctx.where(inter[k])
            share = area[k] / smaller[k] if smaller[k] else 0.0
            if share >= MIXUP_SHARE:
                ctx.findings.append(Finding(
                    Severity.error, "level_mixup",
                    f"{lv}s {ca} and {cb}: one holds {share:.0%} of the other — a feature of another "
                    "level in this level?", [ca, cb], area_m2=float(area[k]), lon=lon, lat=lat))
            else:
                ctx.findings.append(Finding(
                    Severity.error, "overlap", f"{lv}s {ca} and {cb} overlap", [ca, cb],
                    area_m2=float(area[k]), lon=lon, lat=lat))


def _check_nesting(ctx: _Ctx, max_share: float) -> None:
    levels = ctx.frame["level"].astype(str).to_numpy()
    pos = {c: i for i, c in enumerate(ctx.codes) if c}
    kids: list[int] = []
    parents: list[int] = []
    for i, (lv, p) in enumerate(zip(levels, ctx.frame["parent_code"], strict=True)):
        if lv in ("county", "township") and ctx.usable[i] and not _blank(p):
            j = pos.get(str(p))
            if j is not None and ctx.usable[j] and levels[j] == LEVELS[LEVELS.index(lv) - 1]:
                kids.append(i)
                parents.append(j)
    if not kids:
        return
    k = np.array(kids)
    p = np.array(parents)
    outside = shapely.difference(ctx.g[k], ctx.g[p])
    area = ctx.area(outside)
    total = shapely.area(ctx.mg[k])
    for n in np.flatnonzero(area > ctx.min_area):
        share = float(area[n] / total[n]) if total[n] else 1.0
        lon, lat = ctx.where(outside[n])
        sev = Severity.error if share > max_share else Severity.warning
        ctx.findings.append(Finding(
            sev, "not_nested",
            f"{ctx.codes[k[n]]}: {share:.2%} of its area lies outside its parent {ctx.codes[p[n]]}",
            [ctx.codes[k[n]], ctx.codes[p[n]]], area_m2=float(area[n]), lon=lon, lat=lat))


def _check_gaps(ctx: _Ctx) -> None:
    """Territory of a parent that no child covers; holes between siblings without a parent."""
    levels = ctx.frame["level"].astype(str).to_numpy()
    parents = ["" if _blank(p) else str(p) for p in ctx.frame["parent_code"]]
    pos = {c: i for i, c in enumerate(ctx.codes) if c}
    groups: dict[tuple[str, str], list[int]] = {}
    for i in np.flatnonzero(ctx.usable):
        if levels[i] in ("county", "township"):
            groups.setdefault((levels[i], parents[i] or _implied_parent(ctx.codes[i], levels[i])), []).append(int(i))
    for (lv, parent), members in sorted(groups.items()):
        union = shapely.union_all(ctx.g[members])
        j = pos.get(parent)
        if j is not None and ctx.usable[j] and levels[j] == LEVELS[LEVELS.index(lv) - 1]:
            gap = shapely.difference(ctx.g[j], union)
            what = f"part of {parent} covered by none of its {lv}s"
        else:
            # No parent polygon: the holes of the siblings' union, minus anything another
            # group of the same level fills (an enclave of a neighbouring province, say).
            holes = [shapely.Polygon(r) for part in shapely.get_parts(union) for r in part.interiors]
            if not holes:
                continue
            gap = shapely.union_all(holes)
            others = np.flatnonzero(ctx.usable & (levels == lv))
            others = others[~np.isin(others, members)]
            if others.size:
                near = others[shapely.intersects(ctx.g[others], gap)]
                if near.size:
                    gap = shapely.difference(gap, shapely.union_all(ctx.g[near]))
            what = f"hole between {lv}s of parent {parent or '(none)'} covered by no {lv}"
        parts = shapely.get_parts(gap)
        if parts.size == 0:
            continue
        areas = ctx.area(parts)
        for g, a in zip(parts[areas > ctx.min_area], areas[areas > ctx.min_area], strict=True):
            lon, lat = ctx.where(g)
            near_codes = [ctx.codes[members[m]] for m in
                          np.flatnonzero(shapely.dwithin(ctx.g[members], g, 1e-5))][:6]
            ctx.findings.append(Finding(Severity.warning, "gap", f"{what} (next to {', '.join(near_codes)})",
                                        near_codes, area_m2=float(a), lon=lon, lat=lat))


def _implied_parent(code: str, level: str) -> str:
    """Without a parent code, GB/T 2260 codes still name their parent by prefix (320311 → 3203).

    Grouping by it keeps each union small (a national layer in one union takes a minute);
    gaps between groups are not looked for without parent polygons.
    """
    if code.isdigit() and len(code) >= 6:
        return code[:4] if level == "county" else code[:6]
    return ""


def validate_version(session: Session, layer: str, *, min_area_m2: float = 10_000.0,
                     max_outside_share: float = 0.5) -> ValidationReport:
    """Validate a stored version (staged, active or retired) by layer name.

    Parameters
    ----------
    session
        Any session (read only).
    layer
        The version's layer name.
    min_area_m2, max_outside_share
        As for :func:`validate_frame`.

    Returns
    -------
    ValidationReport
    """
    from layers.jurisdictions import layer_frame

    version = _version(session, layer)
    _, report = validate_frame(layer_frame(session, version.id), layer=layer, min_area_m2=min_area_m2,
                               max_outside_share=max_outside_share)
    return report


def _version(session: Session, layer: str) -> BoundaryVersion:
    v = session.scalar(select(BoundaryVersion).where(BoundaryVersion.layer == layer))
    if v is None:
        raise NotFound(f"no boundary layer named {layer!r}", field="layer")
    return v


# ------------------------------------------------------------------------------ diff


@dataclass
class JurisdictionDiff:
    """Added, removed and changed jurisdictions between two versions."""

    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    frame: gpd.GeoDataFrame | None = None  # the changed areas, for maps: status, code, geometry

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "unchanged": self.unchanged}


def diff_frames(old: gpd.GeoDataFrame, new: gpd.GeoDataFrame, *, changed_m2: float = 1.0) -> JurisdictionDiff:
    """Compare two versions' jurisdictions by code.

    Parameters
    ----------
    old, new : geopandas.GeoDataFrame
        As from :func:`layers.jurisdictions.layer_frame` (storage lon/lat).
    changed_m2 : float, default 1
        A common code whose symmetric difference exceeds this area (m²) has changed geometry.

    Returns
    -------
    JurisdictionDiff
        Entries carry ``code``, ``name``, ``level``, ``area_km2`` and, for changes, what changed
        (``geometry_m2``: area of the symmetric difference, ``name``, ``parent``).
    """
    both = pd.concat([old.geometry, new.geometry]) if len(old) else new.geometry
    metric = gcrs.metric_crs_for(tuple(float(b) for b in shapely.total_bounds(both.values)))  # type: ignore[arg-type]
    to_m = gcrs.transformer(gcrs.STORAGE_CRS, metric)
    o = old.set_index("code")
    n = new.set_index("code")
    out = JurisdictionDiff()
    parts: list[dict[str, Any]] = []

    def entry(row: Any, code: str, g: Any) -> dict[str, Any]:
        return {"code": code, "name": row["name"], "level": row["level"], "parent_code": row["parent_code"],
                "area_km2": round(float(shapely.area(g)) / 1e6, 4)}

    added = [c for c in n.index if c not in o.index]
    removed = [c for c in o.index if c not in n.index]
    common = [c for c in n.index if c in o.index]
    for codes_, src, status in ((added, n, "added"), (removed, o, "removed")):
        if not codes_:
            continue
        g = _project(np.asarray(src.loc[codes_].geometry.values, dtype=object), to_m)
        for c, gm, gl in zip(codes_, g, src.loc[codes_].geometry.values, strict=True):
            (out.added if status == "added" else out.removed).append(entry(src.loc[c], c, gm))
            parts.append({"status": status, "code": c, "geometry": gl})
    if common:
        go = np.asarray(o.loc[common].geometry.values, dtype=object)
        gn = np.asarray(n.loc[common].geometry.values, dtype=object)
        # Identical WKB means identical geometry: most codes of a new version are untouched.
        same = shapely.to_wkb(go) == shapely.to_wkb(gn)
        sym_m2 = np.zeros(len(common))
        todo = np.flatnonzero(~same)
        sym = np.empty(len(common), dtype=object)
        if todo.size:
            sym[todo] = shapely.symmetric_difference(go[todo], gn[todo])
            sym_m2[todo] = shapely.area(_project(sym[todo], to_m))
        for k, c in enumerate(common):
            ro, rn = o.loc[c], n.loc[c]
            what: dict[str, Any] = {}
            if sym_m2[k] > changed_m2:
                what["geometry_m2"] = round(float(sym_m2[k]), 1)
                parts.append({"status": "changed", "code": c, "geometry": sym[k]})
            if ro["name"] != rn["name"]:
                what["name"] = [ro["name"], rn["name"]]
            po = None if _blank(ro["parent_code"]) else str(ro["parent_code"])
            pn = None if _blank(rn["parent_code"]) else str(rn["parent_code"])
            if po != pn:
                what["parent"] = [po, pn]
            if ro["level"] != rn["level"]:
                what["level"] = [ro["level"], rn["level"]]
            if what:
                out.changed.append({"code": c, "name": rn["name"], "level": rn["level"], **what})
            else:
                out.unchanged += 1
    out.frame = gpd.GeoDataFrame(parts, geometry="geometry", crs=4326) if parts else \
        gpd.GeoDataFrame({"status": [], "code": []}, geometry=gpd.GeoSeries([], crs=4326))
    return out


# ------------------------------------------------------------------------------ moves


_CODE_COLS = ("city_code", "county_code", "township_code")


@dataclass
class Moves:
    """Stored assignments that a boundary version changes (one row per moving object)."""

    kind: str  # "lead" or "monitoring_point"
    checked: int
    frame: pd.DataFrame  # id, ref, category, old_*, new_* codes, old_body, new_body, method, ...

    @property
    def count(self) -> int:
        return len(self.frame)

    def pairs(self) -> list[dict[str, Any]]:
        """Counts per (old jurisdiction → new jurisdiction, old body → new body), largest first."""
        if self.frame.empty:
            return []
        f = self.frame
        key = pd.DataFrame({
            "from": _deepest(f, "old_"), "to": _deepest(f, "new_"),
            "body_from": f["old_body"].fillna("—"), "body_to": f["new_body"].fillna("—"),
        })
        g = key.groupby(list(key.columns), sort=False).size().reset_index(name="count")
        g = g.sort_values(["count", "from", "to"], ascending=[False, True, True])
        return [dict(r) for r in g.to_dict("records")]

    def to_dict(self, limit: int | None = 1000) -> dict[str, Any]:
        shown = self.frame if limit is None else self.frame.head(limit)
        cols = ["id", "ref", *(f"old_{c}" for c in _CODE_COLS), *(f"new_{c}" for c in _CODE_COLS),
                "old_body", "new_body", "method"]
        items = [{k: (None if pd.isna(v) else v) for k, v in r.items()}
                 for r in shown[cols].to_dict("records")]
        return {"checked": self.checked, "moving": self.count,
                "body_changes": int((self.frame["old_body"].fillna("") != self.frame["new_body"].fillna("")).sum())
                if self.count else 0,
                "pairs": self.pairs(), "items": items, "items_omitted": self.count - len(shown)}


def _deepest(f: pd.DataFrame, prefix: str) -> pd.Series:
    out = f[f"{prefix}township_code"].copy()
    for c in ("county_code", "city_code"):
        out = out.fillna(f[f"{prefix}{c}"])
    return out.fillna("unassigned")


def _stream(session: Session, model: Any, where: list[Any], ref_col: Any, category_col: Any,
            batch: int) -> Iterator[pd.DataFrame]:
    """Stored points and assignments in large partitions (server-side cursor on PostGIS)."""
    stmt = select(
        model.id, ref_col.label("ref"), category_col.label("category"),
        model.city_code, model.county_code, model.township_code, model.body_code,
        func.ST_X(model.geom).label("lon"), func.ST_Y(model.geom).label("lat"),
    ).where(model.geom.is_not(None), *where).order_by(model.id)
    result = session.execute(stmt.execution_options(yield_per=batch, stream_results=True))
    cols = list(result.keys())
    for part in result.partitions(batch):
        yield pd.DataFrame.from_records([tuple(r) for r in part], columns=cols)


def _moves_in(part: pd.DataFrame, index: BoundaryIndex, router: Router, tolerance_m: float,
              near_border_m: float) -> pd.DataFrame:
    lon = part["lon"].to_numpy(dtype=float)
    lat = part["lat"].to_numpy(dtype=float)
    res = assign_points(index, lon, lat, tolerance_m=tolerance_m, near_border_m=near_border_m)
    moved = np.zeros(len(part), dtype=bool)
    for c in _CODE_COLS:
        old = part[c].astype(object).where(part[c].notna(), "").to_numpy()
        new = res[c].astype(object).where(res[c].notna(), "").to_numpy()
        moved |= old != new
    sel = np.flatnonzero(moved)
    if sel.size == 0:
        return pd.DataFrame()
    p = part.iloc[sel].reset_index(drop=True)
    r = res.iloc[sel].reset_index(drop=True)
    out = pd.DataFrame({"id": p["id"].astype("int64"), "ref": p["ref"], "category": p["category"]})
    for c in _CODE_COLS:
        out[f"old_{c}"] = p[c].astype(object).where(p[c].notna(), None)
        out[f"new_{c}"] = r[c].astype(object).where(r[c].notna(), None)
    out["old_body"] = p["body_code"].astype(object).where(p["body_code"].notna(), None)
    # Route each distinct (category, codes) once: a million leads share a few thousand keys.
    routes = [router.route(str(cat), ci, co, tw) for cat, ci, co, tw in zip(
        out["category"], out["new_city_code"], out["new_county_code"], out["new_township_code"], strict=True)]
    out["new_body"] = [rt.body_code for rt in routes]
    out["routing_rule_id"] = [rt.rule_id for rt in routes]
    out["routing_fallback"] = [rt.fallback for rt in routes]
    out["routing_reason"] = [rt.reason for rt in routes]
    out["method"] = r["method"].astype(str)
    out["reason"] = r["reason"].astype(str)
    out["distance_m"] = r["distance_m"].astype(float)
    out["candidates"] = r["candidates"]
    out["review"] = r["review"].astype(bool) | out["routing_fallback"].astype(bool)
    return out


def compute_moves(
    session: Session,
    index: BoundaryIndex,
    router: Router,
    *,
    tolerance_m: float = 200.0,
    near_border_m: float = 50.0,
    batch: int = 250_000,
) -> tuple[Moves, Moves]:
    """Open leads and active monitoring points whose assignment ``index`` would change.

    Only leads in :data:`layers.leads.OPEN_STATES` with a stored point and an automatic
    assignment (inside / border / nearest / unassigned) are re-assigned; closed leads keep the
    assignment they were handled under, and manual or by-address assignments stay as chosen.

    Parameters
    ----------
    session
        Any session.
    index
        The index of the version to compare against (see :class:`geo.assign.BoundaryIndex`).
    router
        Routing rules in force (new bodies for moving objects).
    tolerance_m, near_border_m
        Assignment tolerances, as at intake.
    batch
        Rows per streamed partition.

    Returns
    -------
    (Moves, Moves)
        Leads, then monitoring points.
    """
    from layers.leads import OPEN_STATES

    lead_parts: list[pd.DataFrame] = []
    checked = 0
    for part in _stream(session, Lead, [Lead.status.in_(OPEN_STATES), Lead.assign_method.in_(REASSIGNABLE)],
                        Lead.code, Lead.category_code, batch):
        checked += len(part)
        lead_parts.append(_moves_in(part, index, router, tolerance_m, near_border_m))
    leads = Moves("lead", checked, _concat(lead_parts))
    mp_parts: list[pd.DataFrame] = []
    checked = 0
    category = literal(MONITORING_CATEGORY)
    for part in _stream(session, MonitoringPoint, [MonitoringPoint.active.is_(True)], MonitoringPoint.mn,
                        category, batch):
        checked += len(part)
        mp_parts.append(_moves_in(part, index, router, tolerance_m, near_border_m))
    points = Moves("monitoring_point", checked, _concat(mp_parts))
    return leads, points


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        cols = ["id", "ref", "category", *(f"old_{c}" for c in _CODE_COLS), *(f"new_{c}" for c in _CODE_COLS),
                "old_body", "new_body", "routing_rule_id", "routing_fallback", "routing_reason", "method",
                "reason", "distance_m", "candidates", "review"]
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------ preview


@dataclass
class Preview:
    """What activating ``layer`` would change, against the active version."""

    layer: str
    version_id: int
    against: str | None
    validation: ValidationReport
    jurisdictions: JurisdictionDiff
    leads: Moves
    monitoring_points: Moves
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self, limit: int | None = 1000) -> dict[str, Any]:
        return {
            "layer": self.layer, "version_id": self.version_id, "against": self.against,
            "validation": {"ok": self.validation.ok, "errors": len(self.validation.errors),
                           "warnings": len(self.validation.warnings)},
            "jurisdictions": self.jurisdictions.to_dict(),
            "leads": self.leads.to_dict(limit), "monitoring_points": self.monitoring_points.to_dict(limit),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def to_text(self, limit: int = 20) -> str:
        j = self.jurisdictions
        lines = [
            f"preview of {self.layer} (version {self.version_id}) against {self.against or 'no active layer'}",
            f"validation: {'ok' if self.validation.ok else 'BLOCKED'} ({len(self.validation.errors)} errors, "
            f"{len(self.validation.warnings)} warnings)",
            f"jurisdictions: {len(j.added)} added, {len(j.removed)} removed, {len(j.changed)} changed, "
            f"{j.unchanged} unchanged",
        ]
        for e in j.added[:limit]:
            lines.append(f"  + {e['code']} {e['name']} ({e['level']}, {e['area_km2']} km²)")
        for e in j.removed[:limit]:
            lines.append(f"  - {e['code']} {e['name']} ({e['level']})")
        for e in j.changed[:limit]:
            lines.append(f"  ~ {e['code']} {e['name']}: " + ", ".join(
                f"{k}={v}" for k, v in e.items() if k not in ("code", "name", "level")))
        for m, label in ((self.leads, "open leads"), (self.monitoring_points, "monitoring points")):
            lines.append(f"{label}: {m.count} of {m.checked} would move")
            for p in m.pairs()[:limit]:
                lines.append(f"  {p['from']} → {p['to']}  body {p['body_from']} → {p['body_to']}: {p['count']}")
        return "\n".join(lines)


def preview(
    session: Session,
    layer: str,
    *,
    min_area_m2: float = 10_000.0,
    tolerance_m: float = 200.0,
    near_border_m: float = 50.0,
    validate: bool = True,
) -> Preview:
    """Diff a (usually staged) version against the active one and list what would move.

    Parameters
    ----------
    session
        Any session (read only).
    layer
        The version to preview.
    min_area_m2
        Threshold of the validation summary (see :func:`validate_frame`).
    tolerance_m, near_border_m
        Assignment tolerances, as at intake.
    validate
        Include the validation summary (skip it when the report was just produced).

    Returns
    -------
    Preview
    """
    import time

    from layers.jurisdictions import layer_frame

    t0 = time.perf_counter()
    version = _version(session, layer)
    active = session.scalar(select(BoundaryVersion).where(BoundaryVersion.status == VersionStatus.active.value))
    new = layer_frame(session, version.id)
    if new.empty:
        raise Invalid("layer", layer, "a layer with at least one imported level")
    if validate:
        _, report = validate_frame(new, layer=layer, min_area_m2=min_area_m2)
    else:
        report = ValidationReport(layer, len(new), "", min_area_m2,
                                  [Finding(Severity.warning, "not_validated", "validation skipped")])
    t1 = time.perf_counter()
    old = layer_frame(session, active.id) if active is not None else new.iloc[0:0]
    diff = diff_frames(old, new)
    t2 = time.perf_counter()
    index = BoundaryIndex.build(new, version=str(version.id))
    t3 = time.perf_counter()
    leads, points = compute_moves(session, index, Router.load(session), tolerance_m=tolerance_m,
                                  near_border_m=near_border_m)
    t4 = time.perf_counter()
    return Preview(layer, version.id, active.layer if active else None, report, diff, leads, points,
                   {"validate": t1 - t0, "diff": t2 - t1, "index": t3 - t2, "moves": t4 - t3})
