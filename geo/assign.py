"""Vectorised point -> city / county / township assignment against one boundary version.

A dispatcher must be able to trust every answer, so the rules are few and explicit:

* **inside** means *covers*: a point on a jurisdiction's outer boundary is inside it.
* **border**: a point covered by two or more jurisdictions of the same level (a shared edge or
  vertex, or an overlap in a broken layer) goes to the one with the **lowest code** (plain string
  order of the codes) - deterministic, reproducible and independent of input order.
* **nearest**: a point covered by none but within ``tolerance_m`` (metres, in the index's
  metric CRS) of one goes to the nearest; equal distances again go to the lowest code.
* **unassigned**: anything farther is kept with reason ``'outside service area'``, never dropped.
* **review**: a point within ``near_border_m`` of another jurisdiction of the deepest level gets
  the ranked ``candidates`` and ``review=True``; unassigned points and points that fell back to
  an upper level are always flagged for review.
* The deepest level assigned fixes its ancestors through parent codes, so ``county_code`` is
  always the assigned township's parent (never a second, possibly disagreeing spatial join).

Speed comes from a per-level regular grid built once per boundary version. Each cell records
either the single polygon that covers it, "empty", or (for cells a boundary passes through)
a short candidate list. Points in pure cells are answered by array lookup; the rest are tested
exactly with ``shapely.intersects_xy`` (for a point, intersects == covers), grouped per polygon.
Cells are classified conservatively (a cell is pure only if no boundary segment's bounding box
touches it), so the grid never changes an answer: it only decides how much exact work to do.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyproj
import shapely

from geo import crs as _crs

__all__ = [
    "BoundaryError",
    "BoundaryIndex",
    "HierarchyError",
    "Level",
    "Method",
    "assign",
    "check_hierarchy",
    "lookup",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class Method(StrEnum):
    """How a point was assigned. The values are stored in the database: never rename them."""

    inside = "inside"
    border = "border"
    nearest = "nearest"
    unassigned = "unassigned"


class Level(StrEnum):
    """Administrative level of a jurisdiction, from the top down."""

    city = "city"
    county = "county"
    township = "township"


LEVEL_ORDER: tuple[Level, ...] = (Level.city, Level.county, Level.township)
_OUTPUT_COLUMNS = {
    Level.city: "city_code",
    Level.county: "county_code",
    Level.township: "township_code",
}
_REQUIRED_COLUMNS = ("code", "name", "level", "parent_code", "geometry")


class HierarchyError(ValueError):
    """The layer's codes, levels or parent codes are inconsistent."""


class BoundaryError(ValueError):
    """The boundary layer is malformed (columns, geometry types, empty layer)."""


# --------------------------------------------------------------------------------------------
# Hierarchy
# --------------------------------------------------------------------------------------------


def _codes(values: Any) -> list[str | None]:
    out: list[str | None] = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            out.append(None)
        else:
            out.append(str(v))
    return out


def check_hierarchy(gdf: Any) -> None:
    """Check that a jurisdiction layer's codes and levels form a consistent hierarchy.

    Rules: codes are unique; ``level`` is one of ``city``, ``county``, ``township``; when the
    level directly above a feature's level is present in the layer, the feature's
    ``parent_code`` must be a feature *of that level* in the layer; and whenever a parent code
    names a feature of the layer, that feature must be exactly one level up.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame or pandas.DataFrame
        Columns ``code``, ``level`` and ``parent_code``.

    Raises
    ------
    HierarchyError
        Listing every offending code per rule.
    """
    missing = [c for c in ("code", "level", "parent_code") if c not in gdf.columns]
    if missing:
        raise HierarchyError(f"columns: missing {missing}; required: code, level, parent_code")
    codes = _codes(gdf["code"])
    levels = [str(v) for v in gdf["level"]]
    parents = _codes(gdf["parent_code"])
    problems: list[str] = []

    allowed = {lv.value for lv in Level}
    bad_levels = sorted(
        {f"{c}={lv!r}" for c, lv in zip(codes, levels, strict=True) if lv not in allowed}
    )
    if bad_levels:
        problems.append(f"unknown level (allowed: city, county, township): {', '.join(bad_levels)}")
    null_codes = [i for i, c in enumerate(codes) if not c]
    if null_codes:
        problems.append(f"missing code at rows {null_codes[:20]}")
    seen: dict[str, int] = {}
    for c in codes:
        if c:
            seen[c] = seen.get(c, 0) + 1
    dups = sorted(c for c, k in seen.items() if k > 1)
    if dups:
        problems.append(f"duplicate codes: {', '.join(dups)}")

    level_of = {c: lv for c, lv in zip(codes, levels, strict=True) if c}
    present = set(levels)
    wrong: list[str] = []
    for code, lv, parent in zip(codes, levels, parents, strict=True):
        if lv not in allowed or lv == Level.city:
            continue
        up = LEVEL_ORDER[LEVEL_ORDER.index(Level(lv)) - 1]
        if parent is not None and parent in level_of and level_of[parent] != up:
            wrong.append(f"{code} (parent {parent} is a {level_of[parent]}, expected a {up})")
        elif up in present and (parent is None or parent not in level_of):
            wrong.append(f"{code} (parent {parent!r} is not a {up} of this layer)")
    if wrong:
        problems.append(f"levels disagree with parents: {'; '.join(wrong)}")
    if problems:
        raise HierarchyError("hierarchy: " + " | ".join(problems))


# --------------------------------------------------------------------------------------------
# Per-level index
# --------------------------------------------------------------------------------------------

# Number of grid cells aimed at per boundary segment: enough that most cells are pure and a
# mixed cell holds only a handful of segments, bounded so a level's grid stays <= 16 MB.
_CELLS_PER_SEGMENT = 256
_MIN_CELLS = 1 << 12
_MAX_CELLS = 1 << 22
# Bounding boxes of segments are widened by this many degrees (~1 mm) before marking cells, so
# that floating-point rounding at a cell edge can only ever mark one cell too many, never too few.
_EPS_DEG = 1e-8
# Widening of the near-border search window, relative, to absorb the local metre/degree scale
# approximation (accurate to ~1e-5 over a few hundred metres).
_WINDOW_MARGIN = 1.001

_WGS84_A = 6378137.0
_WGS84_E2 = 6.69437999014e-3


def _metres_per_degree(lat: Any) -> tuple[Any, Any]:
    """Local (lon, lat) metres per degree on the WGS84 ellipsoid."""
    phi = np.radians(lat)
    s2 = np.sin(phi) ** 2
    w = np.sqrt(1.0 - _WGS84_E2 * s2)
    m_lat = _WGS84_A * (1.0 - _WGS84_E2) / (w**3) * (math.pi / 180.0)
    m_lon = _WGS84_A / w * np.cos(phi) * (math.pi / 180.0)
    return m_lon, m_lat


def _expand_csr(offsets: IntArray, values: IntArray, rows: IntArray) -> tuple[IntArray, IntArray]:
    """For each entry of ``rows`` emit (position in rows, value) for every value of that CSR row."""
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    total = int(counts.sum())
    owner = np.repeat(np.arange(rows.size, dtype=np.int64), counts)
    if total == 0:
        return owner, np.empty(0, dtype=values.dtype)
    first = np.cumsum(counts) - counts
    pos = np.arange(total, dtype=np.int64) - np.repeat(first, counts) + np.repeat(starts, counts)
    return owner, values[pos]


def _csr(keys: IntArray, values: IntArray, nrows: int) -> tuple[IntArray, IntArray]:
    order = np.lexsort((values, keys))
    keys = keys[order]
    values = values[order]
    offsets = np.zeros(nrows + 1, dtype=np.int64)
    np.add.at(offsets, keys + 1, 1)
    return np.cumsum(offsets), values


@dataclass(eq=False)
class _LevelIndex:
    level: Level
    codes: npt.NDArray[np.object_]
    names: npt.NDArray[np.object_]
    geoms: npt.NDArray[np.object_]  # storage lon/lat, prepared
    rank: IntArray  # position of each polygon in code order (tie-break key)
    ancestors: dict[Level, npt.NDArray[np.object_]]  # per upper level: ancestor code per polygon
    x0: float
    y0: float
    cell: float
    nx: int
    ny: int
    grid: npt.NDArray[np.int32]  # >=0 pure polygon; -1 empty; <=-2 mixed cell number -v-2
    cand_off: IntArray
    cand_idx: IntArray
    seg_off: IntArray
    seg_idx: IntArray
    seg_xy: FloatArray  # (nseg, 4) x1, y1, x2, y2
    seg_poly: IntArray
    metric_geoms: npt.NDArray[np.object_]
    tree: shapely.STRtree = field(repr=False)
    # True where the cell or one of its 8 neighbours is a boundary cell: a one-gather pre-filter
    # for "is any boundary within less than a cell of this point".
    mixed3: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        m = (self.grid <= -2).reshape(self.ny, self.nx)
        d = m.copy()
        d[1:, :] |= m[:-1, :]
        d[:-1, :] |= m[1:, :]
        e = d.copy()
        e[:, 1:] |= d[:, :-1]
        e[:, :-1] |= d[:, 1:]
        self.mixed3 = e.ravel()

    # ---------------------------------------------------------------- build

    @classmethod
    def build(
        cls,
        level: Level,
        codes: list[str],
        names: list[str],
        geoms: npt.NDArray[np.object_],
        ancestors: dict[Level, npt.NDArray[np.object_]],
        to_metric: pyproj.Transformer,
        max_cells: int,
    ) -> _LevelIndex:
        n = len(codes)
        code_arr = np.array(codes, dtype=object)
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(np.array(codes, dtype=str), kind="stable")] = np.arange(n)

        minx, miny, maxx, maxy = shapely.total_bounds(geoms)
        seg_xy, seg_poly = _segments(geoms, None)
        nseg = max(len(seg_poly), 1)
        w = max(maxx - minx, 1e-6)
        h = max(maxy - miny, 1e-6)
        target = min(max(_CELLS_PER_SEGMENT * nseg, _MIN_CELLS), max_cells)
        cell = math.sqrt(w * h / target)
        cell = min(cell, max(w, h))
        # One spare cell on every side, so boundary points never fall on the grid's own edge.
        x0 = minx - cell
        y0 = miny - cell
        nx = math.ceil((maxx + cell - x0) / cell) + 1
        ny = math.ceil((maxy + cell - y0) / cell) + 1
        # Re-cut the boundaries so that no segment is longer than a cell: a segment's bounding
        # box then spans at most 2x2 cells (3x3 with the rounding margin).
        seg_xy, seg_poly = _segments(geoms, cell * 0.999)

        # Cells touched by a segment's (widened) bounding box.
        sx0 = np.floor((np.minimum(seg_xy[:, 0], seg_xy[:, 2]) - _EPS_DEG - x0) / cell).astype(
            np.int64
        )
        sx1 = np.floor((np.maximum(seg_xy[:, 0], seg_xy[:, 2]) + _EPS_DEG - x0) / cell).astype(
            np.int64
        )
        sy0 = np.floor((np.minimum(seg_xy[:, 1], seg_xy[:, 3]) - _EPS_DEG - y0) / cell).astype(
            np.int64
        )
        sy1 = np.floor((np.maximum(seg_xy[:, 1], seg_xy[:, 3]) + _EPS_DEG - y0) / cell).astype(
            np.int64
        )
        seg_ids = np.arange(len(seg_poly), dtype=np.int64)
        cells_l: list[IntArray] = []
        segs_l: list[IntArray] = []
        for dx in range(int((sx1 - sx0).max(initial=0)) + 1):
            for dy in range(int((sy1 - sy0).max(initial=0)) + 1):
                ok = (sx0 + dx <= sx1) & (sy0 + dy <= sy1)
                cells_l.append((sy0[ok] + dy) * nx + sx0[ok] + dx)
                segs_l.append(seg_ids[ok])
        seg_cell = np.concatenate(cells_l) if cells_l else np.empty(0, np.int64)
        seg_of = np.concatenate(segs_l) if segs_l else np.empty(0, np.int64)

        ncell = nx * ny
        mixed = np.zeros(ncell, dtype=bool)
        mixed[seg_cell] = True

        # Cells no boundary touches come in row runs that are uniformly inside or outside every
        # polygon; one exact test of a representative point per run classifies the whole run.
        col = np.arange(ncell, dtype=np.int64) % nx
        prev_mixed = np.empty(ncell, dtype=bool)
        prev_mixed[0] = True
        prev_mixed[1:] = mixed[:-1]
        starts = ~mixed & ((col == 0) | prev_mixed)
        run_start = np.flatnonzero(starts)
        run_id = np.cumsum(starts) - 1
        tree = shapely.STRtree(geoms)
        rep = shapely.points(
            x0 + (run_start % nx + 0.5) * cell, y0 + (run_start // nx + 0.5) * cell
        )
        r_idx, p_idx = tree.query(rep, predicate="intersects")
        run_count = np.bincount(r_idx, minlength=run_start.size)
        run_poly = np.full(run_start.size, -1, dtype=np.int64)
        run_poly[r_idx] = p_idx  # only read where run_count == 1
        grid = np.full(ncell, -1, dtype=np.int64)
        pure = ~mixed
        cls_run = np.where(run_count == 1, run_poly, -1)
        cls_run[run_count >= 2] = -2  # overlapping polygons (broken layer): exact test needed
        grid[pure] = cls_run[run_id[pure]]

        # Candidate lists for mixed cells: polygons whose boundary passes, plus polygons covering
        # the cell centre (a polygon meeting the cell without a boundary in it covers the cell).
        multi_cells = np.flatnonzero(grid == -2)
        mixed_cells = np.union1d(np.flatnonzero(mixed), multi_cells)
        mixed_no = np.full(ncell, -1, dtype=np.int64)
        mixed_no[mixed_cells] = np.arange(mixed_cells.size)
        centres = shapely.points(
            x0 + (mixed_cells % nx + 0.5) * cell, y0 + (mixed_cells // nx + 0.5) * cell
        )
        c_idx, cp_idx = tree.query(centres, predicate="intersects")
        cand_keys = np.concatenate([mixed_no[seg_cell], c_idx])
        cand_vals = np.concatenate([seg_poly[seg_of], cp_idx])
        pairs = np.unique(cand_keys * n + cand_vals)
        cand_off, cand_idx = _csr(pairs // n, pairs % n, mixed_cells.size)
        seg_off, seg_idx = _csr(mixed_no[seg_cell], seg_of, mixed_cells.size)
        grid[mixed_cells] = -2 - np.arange(mixed_cells.size)

        shapely.prepare(geoms)

        def _fwd(coords: FloatArray) -> FloatArray:
            mx, my = to_metric.transform(coords[:, 0], coords[:, 1])
            return np.column_stack([mx, my])

        metric_geoms = np.asarray(shapely.transform(geoms, _fwd), dtype=object)
        return cls(
            level=level,
            codes=code_arr,
            names=np.array(names, dtype=object),
            geoms=geoms,
            rank=rank,
            ancestors=ancestors,
            x0=float(x0),
            y0=float(y0),
            cell=float(cell),
            nx=nx,
            ny=ny,
            grid=grid.astype(np.int32),
            cand_off=cand_off,
            cand_idx=cand_idx,
            seg_off=seg_off,
            seg_idx=seg_idx,
            seg_xy=seg_xy,
            seg_poly=seg_poly,
            metric_geoms=metric_geoms,
            tree=shapely.STRtree(metric_geoms),
        )

    # ---------------------------------------------------------------- queries

    def cells_of(self, lon: FloatArray, lat: FloatArray) -> npt.NDArray[np.int32]:
        fx = (lon - self.x0) / self.cell
        fy = (lat - self.y0) / self.cell
        inb = (fx >= 0) & (fx < self.nx) & (fy >= 0) & (fy < self.ny)
        if inb.all():
            # Truncation equals floor for non-negative values.
            return self.grid[fy.astype(np.int64) * self.nx + fx.astype(np.int64)]
        v = np.full(lon.shape, -1, dtype=np.int32)
        v[inb] = self.grid[fy[inb].astype(np.int64) * self.nx + fx[inb].astype(np.int64)]
        return v

    def covering(
        self, lon: FloatArray, lat: FloatArray
    ) -> tuple[IntArray, IntArray, IntArray, IntArray]:
        """Exact covers. Returns (chosen polygon or -1, count, multi-cover pts, their polys)."""
        v = self.cells_of(lon, lat)
        chosen = v.astype(np.int64)
        chosen[v < 0] = -1
        count = (v >= 0).astype(np.int64)
        mixed_pts = np.flatnonzero(v <= -2)
        empty = np.empty(0, dtype=np.int64)
        if mixed_pts.size == 0:
            return chosen, count, empty, empty
        owner, poly = _expand_csr(
            self.cand_off, self.cand_idx, (-2 - v[mixed_pts]).astype(np.int64)
        )
        pts = mixed_pts[owner]
        order = np.argsort(poly, kind="stable")
        pts = pts[order]
        poly = poly[order]
        hit = np.zeros(pts.size, dtype=bool)
        bounds = np.flatnonzero(np.diff(poly)) + 1
        for s, e in zip(
            np.concatenate([[0], bounds]), np.concatenate([bounds, [poly.size]]), strict=True
        ):
            sel = pts[s:e]
            hit[s:e] = shapely.intersects_xy(self.geoms[poly[s]], lon[sel], lat[sel])
        pts = pts[hit]
        poly = poly[hit]
        np.add.at(count, pts, 1)
        # Lowest code wins: sort by (point, rank) and keep the first polygon of every point.
        order = np.lexsort((self.rank[poly], pts))
        pts = pts[order]
        poly = poly[order]
        first = np.ones(pts.size, dtype=bool)
        first[1:] = pts[1:] != pts[:-1]
        chosen[pts[first]] = poly[first]
        multi = count[pts] >= 2
        return chosen, count, pts[multi], poly[multi]

    def nearest(
        self, xm: FloatArray, ym: FloatArray, tolerance_m: float
    ) -> tuple[IntArray, FloatArray]:
        """Nearest polygon within tolerance (metric). Returns (polygon or -1, distance or NaN)."""
        chosen = np.full(xm.size, -1, dtype=np.int64)
        dist = np.full(xm.size, np.nan)
        if xm.size == 0 or not tolerance_m > 0:
            return chosen, dist
        (qi, ti), d = self.tree.query_nearest(
            shapely.points(xm, ym), max_distance=tolerance_m, return_distance=True, all_matches=True
        )
        if qi.size:
            order = np.lexsort((self.rank[ti], d, qi))
            qi, ti, d = qi[order], ti[order], d[order]
            first = np.ones(qi.size, dtype=bool)
            first[1:] = qi[1:] != qi[:-1]
            chosen[qi[first]] = ti[first]
            dist[qi[first]] = d[first]
        return chosen, dist

    def near_pairs(
        self, lon: FloatArray, lat: FloatArray, radius_m: float
    ) -> tuple[IntArray, IntArray, FloatArray]:
        """(point, polygon, boundary distance) for every polygon boundary within radius_m."""
        empty = np.empty(0, dtype=np.int64)
        # Pass 1, cheap and conservative: a window sized for the grid's highest latitude (where
        # a degree of longitude is shortest) tells which points have any boundary cell nearby.
        lat_hi = max(abs(self.y0), abs(self.y0 + self.ny * self.cell))
        wx, wy = _metres_per_degree(min(lat_hi, 89.0))
        sel = self._window_has_mixed(lon, lat, radius_m / wx, radius_m / wy)
        if sel.size == 0:
            return empty, empty, np.empty(0)
        lon = lon[sel]
        lat = lat[sel]
        m_lon, m_lat = _metres_per_degree(lat)
        dx = radius_m * _WINDOW_MARGIN / m_lon + _EPS_DEG
        dy = radius_m * _WINDOW_MARGIN / m_lat + _EPS_DEG
        i0 = np.clip(np.floor((lon - dx - self.x0) / self.cell), 0, self.nx - 1).astype(np.int64)
        i1 = np.clip(np.floor((lon + dx - self.x0) / self.cell), 0, self.nx - 1).astype(np.int64)
        j0 = np.clip(np.floor((lat - dy - self.y0) / self.cell), 0, self.ny - 1).astype(np.int64)
        j1 = np.clip(np.floor((lat + dy - self.y0) / self.cell), 0, self.ny - 1).astype(np.int64)
        pts_l: list[IntArray] = []
        segs_l: list[IntArray] = []
        allpts = np.arange(lon.size, dtype=np.int64)
        for di in range(int((i1 - i0).max(initial=0)) + 1):
            for dj in range(int((j1 - j0).max(initial=0)) + 1):
                ok = (i0 + di <= i1) & (j0 + dj <= j1)
                v = self.grid[(j0[ok] + dj) * self.nx + i0[ok] + di]
                is_mixed = v <= -2
                if not is_mixed.any():
                    continue
                owner, seg = _expand_csr(
                    self.seg_off, self.seg_idx, (-2 - v[is_mixed]).astype(np.int64)
                )
                pts_l.append(allpts[ok][is_mixed][owner])
                segs_l.append(seg)
        if not pts_l:
            return empty, empty, np.empty(0)
        pts = np.concatenate(pts_l)
        seg = np.concatenate(segs_l)
        s = self.seg_xy[seg]
        ml = m_lon[pts]
        mt = m_lat[pts]
        # Point-to-segment distance in a local tangent plane (metres).
        ax = (s[:, 0] - lon[pts]) * ml
        ay = (s[:, 1] - lat[pts]) * mt
        bx = (s[:, 2] - lon[pts]) * ml
        by = (s[:, 3] - lat[pts]) * mt
        ex = bx - ax
        ey = by - ay
        ll = ex * ex + ey * ey
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(ll > 0, -(ax * ex + ay * ey) / ll, 0.0)
        t = np.clip(t, 0.0, 1.0)
        d = np.hypot(ax + t * ex, ay + t * ey)
        keep = d <= radius_m
        pts, poly, d = pts[keep], self.seg_poly[seg[keep]], d[keep]
        n = len(self.codes)
        key = pts * n + poly
        order = np.lexsort((d, key))
        key, d = key[order], d[order]
        first = np.ones(key.size, dtype=bool)
        first[1:] = key[1:] != key[:-1]
        key, d = key[first], d[first]
        return sel[key // n], key % n, d

    def _window_has_mixed(self, lon: FloatArray, lat: FloatArray, dx: float, dy: float) -> IntArray:
        """Indices of points whose [lon +- dx] x [lat +- dy] window meets a boundary cell."""
        dx = dx * _WINDOW_MARGIN + 2 * _EPS_DEG
        dy = dy * _WINDOW_MARGIN + 2 * _EPS_DEG
        if dx < self.cell and dy < self.cell:
            # The window lies within the 3x3 block around the point's cell: one gather on the
            # dilated mask discards most points before the exact window test.
            fx = (lon - self.x0) / self.cell
            fy = (lat - self.y0) / self.cell
            inb = (fx >= 0) & (fx < self.nx) & (fy >= 0) & (fy < self.ny)
            keep = ~inb
            ib = np.flatnonzero(inb)
            keep[ib] = self.mixed3[fy[ib].astype(np.int64) * self.nx + fx[ib].astype(np.int64)]
            pre = np.flatnonzero(keep)
            if pre.size == 0:
                return pre
            return pre[self._window_exact(lon[pre], lat[pre], dx, dy)]
        return self._window_exact(lon, lat, dx, dy)

    def _window_exact(self, lon: FloatArray, lat: FloatArray, dx: float, dy: float) -> IntArray:
        fx = (lon - self.x0) / self.cell
        fy = (lat - self.y0) / self.cell
        rx = dx / self.cell
        ry = dy / self.cell
        i0 = np.clip(np.floor(fx - rx), 0, self.nx - 1).astype(np.int64)
        i1 = np.clip(np.floor(fx + rx), 0, self.nx - 1).astype(np.int64)
        j0 = np.clip(np.floor(fy - ry), 0, self.ny - 1).astype(np.int64)
        j1 = np.clip(np.floor(fy + ry), 0, self.ny - 1).astype(np.int64)
        hit = np.zeros(lon.size, dtype=bool)
        mixed_grid = self.grid <= -2
        for di in range(int((i1 - i0).max(initial=0)) + 1):
            for dj in range(int((j1 - j0).max(initial=0)) + 1):
                ci = np.minimum(i0 + di, i1)
                cj = np.minimum(j0 + dj, j1)
                hit |= mixed_grid[cj * self.nx + ci]
        return np.flatnonzero(hit)


def _segments(geoms: npt.NDArray[np.object_], max_len: float | None) -> tuple[FloatArray, IntArray]:
    """All boundary segments (x1, y1, x2, y2) with their polygon index."""
    rings = shapely.boundary(geoms)
    if max_len is not None:
        rings = shapely.segmentize(rings, max_len)
    parts, part_poly = shapely.get_parts(rings, return_index=True)
    coords, part_of = shapely.get_coordinates(parts, return_index=True)
    same = part_of[1:] == part_of[:-1]
    seg = np.column_stack([coords[:-1][same], coords[1:][same]])
    return np.ascontiguousarray(seg, dtype=np.float64), part_poly[part_of[:-1][same]].astype(
        np.int64
    )


# --------------------------------------------------------------------------------------------
# BoundaryIndex
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class BoundaryIndex:
    """Spatial index of one boundary version, built once and shared by all assignments.

    Build with :meth:`BoundaryIndex.build`. Attributes: ``version``, ``levels`` (present levels,
    top down), ``names`` (code -> name, all levels), ``bounds`` (storage lon/lat),
    ``metric_crs``.
    """

    version: str
    levels: tuple[Level, ...]
    names: Mapping[str, str]
    bounds: tuple[float, float, float, float]
    metric_crs: pyproj.CRS
    _by_level: dict[Level, _LevelIndex] = field(repr=False)
    _to_metric: pyproj.Transformer = field(repr=False)

    @classmethod
    def build(
        cls,
        gdf: Any,
        version: str,
        *,
        metric_crs: pyproj.CRS | str | int | None = None,
        max_cells: int = _MAX_CELLS,
    ) -> BoundaryIndex:
        """Validate a jurisdiction layer and build its per-level index.

        Parameters
        ----------
        gdf : geopandas.GeoDataFrame
            Columns ``code`` (str), ``name`` (str), ``level`` (``city``/``county``/
            ``township``), ``parent_code`` (str or None) and ``geometry`` (Polygon or
            MultiPolygon in storage lon/lat, EPSG:4326).
        version : str
            Identifier of the boundary version, echoed in every lookup.
        metric_crs : pyproj.CRS, str or int, optional
            Projected CRS for distances; default :func:`geo.crs.metric_crs_for` of the bounds.
        max_cells : int, optional
            Upper bound on grid cells per level (memory: 4 bytes per cell).

        Returns
        -------
        BoundaryIndex

        Raises
        ------
        BoundaryError
            Missing columns, empty layer, or geometries that are not non-empty polygons.
        HierarchyError
            Inconsistent codes / levels / parents (see :func:`check_hierarchy`).
        """
        missing = [c for c in _REQUIRED_COLUMNS if c not in gdf.columns]
        if missing:
            raise BoundaryError(
                f"columns: missing {missing}; required: {', '.join(_REQUIRED_COLUMNS)}"
            )
        if len(gdf) == 0:
            raise BoundaryError("layer: no features; at least one jurisdiction is required")
        check_hierarchy(gdf)
        geoms = np.asarray(getattr(gdf.geometry, "values", gdf.geometry), dtype=object)
        types = shapely.get_type_id(geoms)
        codes = [str(c) for c in gdf["code"]]
        bad = [codes[i] for i in np.flatnonzero(~np.isin(types, [3, 6]) | shapely.is_empty(geoms))]
        if bad:
            raise BoundaryError(
                f"geometry: features {bad[:20]} are not non-empty Polygon/MultiPolygon"
            )
        if getattr(gdf, "crs", None) is not None and not gdf.crs.is_geographic:
            raise BoundaryError(
                f"crs: {gdf.crs.to_string()!r} is projected; boundaries must be storage lon/lat "
                "(EPSG:4326)"
            )
        # The grid and candidate tests share geometry objects; copy so preparing them does not
        # touch the caller's frame.
        geoms = np.array([shapely.from_wkb(w) for w in shapely.to_wkb(geoms)], dtype=object)
        names_list = [str(v) for v in gdf["name"]]
        levels_list = [str(v) for v in gdf["level"]]
        parents = _codes(gdf["parent_code"])
        minx, miny, maxx, maxy = (float(v) for v in shapely.total_bounds(geoms))
        _crs.validate_lonlat([minx, maxx], [miny, maxy])
        mcrs = (
            _crs.metric_crs_for((minx, miny, maxx, maxy))
            if metric_crs is None
            else pyproj.CRS.from_user_input(metric_crs)
        )
        to_metric = _crs.transformer(_crs.STORAGE_CRS, mcrs)

        parent_of = dict(zip(codes, parents, strict=True))
        level_of = dict(zip(codes, levels_list, strict=True))
        present = tuple(lv for lv in LEVEL_ORDER if lv.value in set(levels_list))
        by_level: dict[Level, _LevelIndex] = {}
        for lv in present:
            rows = [i for i, x in enumerate(levels_list) if x == lv.value]
            ancestors: dict[Level, npt.NDArray[np.object_]] = {}
            # Walk parent codes upwards; a parent not in the layer still names the level above
            # (e.g. a township layer without counties still knows its county code).
            current: list[str | None] = [codes[i] for i in rows]
            for up in reversed(LEVEL_ORDER[: LEVEL_ORDER.index(lv)]):
                current = [
                    (parent_of.get(c) if c in level_of else None) if c is not None else None
                    for c in current
                ]
                ancestors[up] = np.array(current, dtype=object)
            by_level[lv] = _LevelIndex.build(
                lv,
                [codes[i] for i in rows],
                [names_list[i] for i in rows],
                geoms[rows],
                ancestors,
                to_metric,
                max_cells,
            )
        return cls(
            version=str(version),
            levels=present,
            names=dict(zip(codes, names_list, strict=True)),
            bounds=(minx, miny, maxx, maxy),
            metric_crs=mcrs,
            _by_level=by_level,
            _to_metric=to_metric,
        )


# --------------------------------------------------------------------------------------------
# assign
# --------------------------------------------------------------------------------------------


def _validate_params(tolerance_m: float, near_border_m: float) -> None:
    for name, v in (("tolerance_m", tolerance_m), ("near_border_m", near_border_m)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: {v!r} is not allowed; expected a finite number >= 0 metres")


def _fmt_m(d: float) -> str:
    return f"{d:.1f} m"


def assign(
    index: BoundaryIndex,
    lon: npt.ArrayLike,
    lat: npt.ArrayLike,
    *,
    tolerance_m: float = 200.0,
    near_border_m: float = 50.0,
) -> pd.DataFrame:
    """Assign storage lon/lat points to city, county and township.

    See the module docstring for the rules. Vectorised: whole arrays go through the grid; only
    points in boundary cells get exact tests (per polygon), and only points covered by nothing
    get STRtree nearest queries in the metric CRS.

    Parameters
    ----------
    index : BoundaryIndex
        The active boundary version.
    lon, lat : array_like
        Storage (EPSG:4326) degrees; convert other datums with :func:`geo.crs.to_storage`.
    tolerance_m : float, default 200
        Points covered by nothing but this close (metres) to a jurisdiction go to it.
    near_border_m : float, default 50
        Points this close to another jurisdiction of the deepest level are flagged for review.

    Returns
    -------
    pandas.DataFrame
        One row per input point, same order: ``city_code``, ``county_code``,
        ``township_code`` (str or None), ``method`` (:class:`Method`), ``reason`` (str),
        ``distance_m`` (0 inside/border, metres for nearest, NaN unassigned), ``candidates``
        (list of ``{"code", "distance_m"}`` ranked by distance, empty unless flagged),
        ``review`` (bool).

    Raises
    ------
    geo.crs.CoordinateError
        For NaN, infinite or out-of-range coordinates (naming the first one).
    """
    out = _assign_arrays(index, lon, lat, tolerance_m=tolerance_m, near_border_m=near_border_m)
    # Explicit object dtype: pandas >= 3 would otherwise infer its string dtype and turn the
    # documented None into NaN.
    return pd.DataFrame(
        {
            k: pd.Series(v, dtype=object, copy=False) if k in _OBJECT_COLUMNS else v
            for k, v in out.items()
        }
    )


_OBJECT_COLUMNS = frozenset(
    {"city_code", "county_code", "township_code", "method", "reason", "candidates"}
)


def _assign_arrays(
    index: BoundaryIndex,
    lon: npt.ArrayLike,
    lat: npt.ArrayLike,
    *,
    tolerance_m: float,
    near_border_m: float,
) -> dict[str, Any]:
    _validate_params(tolerance_m, near_border_m)
    x = np.ascontiguousarray(np.atleast_1d(np.asarray(lon, dtype=np.float64)).ravel())
    y = np.ascontiguousarray(np.atleast_1d(np.asarray(lat, dtype=np.float64)).ravel())
    _crs.validate_lonlat(x, y)
    n = x.size
    # np.empty on object dtype is already filled with None, and much faster than np.full.
    codes_out: dict[Level, npt.NDArray[np.object_]] = {
        lv: np.empty(n, dtype=object) for lv in LEVEL_ORDER
    }
    method = np.full(n, 3, dtype=np.int8)  # index into _METHODS; 3 = unassigned
    dist = np.full(n, np.nan)
    review = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}  # row -> reason, for the few rows not explained by method
    cands: dict[int, list[dict[str, Any]]] = {}

    deepest = index.levels[-1]
    todo = np.arange(n, dtype=np.int64)
    for lv in reversed(index.levels):
        if todo.size == 0:
            break
        li = index._by_level[lv]
        px, py = x[todo], y[todo]
        chosen, count, multi_pts, multi_poly = li.covering(px, py)
        near_d = np.where(chosen >= 0, 0.0, np.nan)
        out_local = np.flatnonzero(chosen < 0)
        if out_local.size and tolerance_m > 0:
            # Only points with a boundary cell within tolerance can be near anything.
            lat_hi = max(abs(li.y0), abs(li.y0 + li.ny * li.cell))
            wx, wy = _metres_per_degree(min(lat_hi, 89.0))
            out_local = out_local[
                li._window_has_mixed(
                    px[out_local], py[out_local], tolerance_m / wx, tolerance_m / wy
                )
            ]
        if out_local.size:
            xm, ym = index._to_metric.transform(px[out_local], py[out_local])
            nc, nd = li.nearest(np.asarray(xm), np.asarray(ym), tolerance_m)
            chosen[out_local] = nc
            near_d[out_local] = nd
        got = chosen >= 0
        g_pts = todo[got]
        g_poly = chosen[got]
        codes_out[lv][g_pts] = li.codes[g_poly]
        for up, anc in li.ancestors.items():
            codes_out[up][g_pts] = anc[g_poly]
        m = np.where(count[got] >= 2, 1, np.where(count[got] == 1, 0, 2)).astype(np.int8)
        method[g_pts] = m
        dist[g_pts] = near_d[got]
        level_reasons: dict[int, str] = {}
        _explain(
            li,
            level_reasons,
            g_pts,
            m,
            near_d[got],
            todo,
            px,
            py,
            multi_pts,
            multi_poly,
            tolerance_m,
        )
        if lv != deepest:
            review[g_pts] = True
            for r, mm in zip(g_pts.tolist(), m.tolist(), strict=True):
                why = level_reasons.get(r, _METHODS[mm].value)
                reasons[r] = f"no {deepest.value} within {tolerance_m:g} m; {lv.value}: {why}"
        else:
            reasons.update(level_reasons)
            _near_border(
                li,
                x,
                y,
                todo,
                chosen,
                near_d,
                count,
                multi_pts,
                multi_poly,
                near_border_m,
                cands,
                review,
            )
        todo = todo[~got]
    review[method == 3] = True

    reason = _BASE_REASONS[method]
    if reasons:
        reason[np.fromiter(reasons.keys(), dtype=np.int64, count=len(reasons))] = np.array(
            list(reasons.values()), dtype=object
        )
    # A plain list: numpy would try to broadcast equal-length lists into a 2-D array. Creating
    # a million small lists triggers the cyclic GC many times over; empty lists cannot form
    # cycles, so pausing it here is safe and several times faster.
    gc_on = gc.isenabled()
    gc.disable()
    try:
        candidates: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    finally:
        if gc_on:
            gc.enable()
    for r, lst in cands.items():
        candidates[r] = lst
    return {
        "city_code": codes_out[Level.city],
        "county_code": codes_out[Level.county],
        "township_code": codes_out[Level.township],
        "method": _METHODS[method],
        "reason": reason,
        "distance_m": dist,
        "candidates": candidates,
        "review": review,
    }


_METHODS = np.array([Method.inside, Method.border, Method.nearest, Method.unassigned], dtype=object)
_BASE_REASONS = np.array(["inside", "border", "nearest", "outside service area"], dtype=object)


def _explain(
    li: _LevelIndex,
    reasons: dict[int, str],
    g_pts: IntArray,
    m: npt.NDArray[np.int8],
    d: FloatArray,
    todo: IntArray,
    px: FloatArray,
    py: FloatArray,
    multi_pts: IntArray,
    multi_poly: IntArray,
    tolerance_m: float,
) -> None:
    """Write the human-readable reasons for the (few) border and nearest points."""
    near = np.flatnonzero(m == 2)
    if near.size:
        for r, v in zip(g_pts[near].tolist(), d[near].tolist(), strict=True):
            reasons[r] = f"nearest jurisdiction within {tolerance_m:g} m ({_fmt_m(v)})"
    if multi_pts.size:
        order = np.lexsort((li.rank[multi_poly], multi_pts))
        mp, mq = multi_pts[order], multi_poly[order]
        # A point strictly inside two polygons is an overlap (broken layer), not a border.
        interior = np.zeros(mp.size, dtype=bool)
        for q in np.unique(mq):
            sel = mq == q
            interior[sel] = shapely.contains_xy(li.geoms[q], px[mp[sel]], py[mp[sel]])
        bounds = np.flatnonzero(np.diff(mp)) + 1
        for s, e in zip(
            np.concatenate([[0], bounds]), np.concatenate([bounds, [mp.size]]), strict=True
        ):
            names = " and ".join(str(c) for c in li.codes[mq[s:e]])
            where = "overlap" if interior[s:e].sum() >= 2 else "shared border"
            reasons[int(todo[mp[s]])] = f"on {where} of {names}; tie-break: lowest code"


def _near_border(
    li: _LevelIndex,
    x: FloatArray,
    y: FloatArray,
    todo: IntArray,
    chosen: IntArray,
    near_d: FloatArray,
    count: IntArray,
    multi_pts: IntArray,
    multi_poly: IntArray,
    radius_m: float,
    candidates: dict[int, list[dict[str, Any]]],
    review: npt.NDArray[np.bool_],
) -> None:
    """Rank the jurisdictions within radius_m of assigned points that have another nearby."""
    got = np.flatnonzero(chosen >= 0)
    if got.size == 0:
        return
    px, py = x[todo[got]], y[todo[got]]
    pts, poly, d = li.near_pairs(px, py, radius_m)
    own = chosen[got]
    if pts.size == 0:
        return
    # Distance to a polygon that covers the point is 0, not the distance to its boundary.
    n = len(li.codes)
    cnt = count[got]
    covers = (poly == own[pts]) & (cnt[pts] >= 1)
    multi = cnt[pts] >= 2
    if multi.any():
        multi_keys = np.searchsorted(got, multi_pts) * n + multi_poly
        covers[multi] |= np.isin(pts[multi] * n + poly[multi], multi_keys)
    d = np.where(covers, 0.0, d)
    other = poly != own[pts]
    if not other.any():
        return
    flag_mask = np.zeros(got.size, dtype=bool)
    flag_mask[pts[other]] = True
    flagged = np.flatnonzero(flag_mask)
    sel = flag_mask[pts]
    pts, poly, d = pts[sel], poly[sel], d[sel]
    # Make sure the assigned jurisdiction is listed with its own distance.
    pts = np.concatenate([pts, flagged])
    poly = np.concatenate([poly, own[flagged]])
    d = np.concatenate([d, near_d[got][flagged]])
    order = np.lexsort((li.rank[poly], d, pts))
    pts, poly, d = pts[order], poly[order], d[order]
    key = pts * n + poly
    keep = np.ones(key.size, dtype=bool)
    # Drop repeats of a polygon (the assigned one may appear twice); keep the first (smallest).
    seen_order = np.lexsort((np.arange(key.size), key))
    dup = np.zeros(key.size, dtype=bool)
    ks = key[seen_order]
    dup[seen_order[1:]] = ks[1:] == ks[:-1]
    keep &= ~dup
    pts, poly, d = pts[keep], poly[keep], d[keep]
    codes = li.codes[poly].tolist()
    dl = np.round(d, 2).tolist()
    starts = np.flatnonzero(np.r_[True, pts[1:] != pts[:-1]])
    ends = np.r_[starts[1:], pts.size]
    rows = todo[got[pts[starts]]]
    # Only flagged points get here, so building their small lists in Python is cheap.
    for r, s, e in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True):
        candidates[r] = [{"code": codes[k], "distance_m": dl[k]} for k in range(s, e)]
    review[rows] = True


# --------------------------------------------------------------------------------------------
# lookup (single point)
# --------------------------------------------------------------------------------------------


def _ref(index: BoundaryIndex, code: Any) -> dict[str, str] | None:
    if code is None:
        return None
    return {"code": str(code), "name": index.names.get(str(code), "")}


def lookup(
    index: BoundaryIndex,
    lon: float,
    lat: float,
    *,
    tolerance_m: float = 200.0,
    near_border_m: float = 50.0,
) -> dict[str, Any]:
    """Assign a single point (same rules as :func:`assign`) and return a plain dict.

    Points in a pure grid cell with no boundary within ``near_border_m`` take a scalar fast
    path; everything else goes through :func:`assign` on one point.

    Parameters
    ----------
    index : BoundaryIndex
    lon, lat : float
        Storage (EPSG:4326) degrees.
    tolerance_m, near_border_m : float
        As for :func:`assign`.

    Returns
    -------
    dict
        ``city``, ``county``, ``township`` (``{"code", "name"}`` or None), ``method``,
        ``reason``, ``version``, ``candidates``, ``distance_m``, ``review``.
    """
    x = float(lon)
    y = float(lat)
    if not (math.isfinite(x) and math.isfinite(y) and abs(x) <= 180.0 and abs(y) <= 90.0):
        _crs.validate_lonlat(x, y)
    li = index._by_level[index.levels[-1]]
    fx = (x - li.x0) / li.cell
    fy = (y - li.y0) / li.cell
    ix = math.floor(fx)
    iy = math.floor(fy)
    if 0 <= ix < li.nx and 0 <= iy < li.ny and near_border_m >= 0:
        v = li.grid.item(iy * li.nx + ix)
        if v >= 0:
            # Window of cells within near_border_m; if none holds a boundary, the answer is final.
            phi = math.radians(y)
            w = math.sqrt(1.0 - _WGS84_E2 * math.sin(phi) ** 2)
            m_lat = _WGS84_A * (1.0 - _WGS84_E2) / (w**3) * (math.pi / 180.0)
            m_lon = _WGS84_A / w * math.cos(phi) * (math.pi / 180.0)
            rx = (near_border_m * _WINDOW_MARGIN / m_lon + _EPS_DEG) / li.cell
            ry = (near_border_m * _WINDOW_MARGIN / m_lat + _EPS_DEG) / li.cell
            i0 = max(math.floor(fx - rx), 0)
            i1 = min(math.floor(fx + rx), li.nx - 1)
            j0 = max(math.floor(fy - ry), 0)
            j1 = min(math.floor(fy + ry), li.ny - 1)
            clear = True
            grid = li.grid
            for j in range(j0, j1 + 1):
                base = j * li.nx
                for i in range(i0, i1 + 1):
                    if grid.item(base + i) <= -2:
                        clear = False
                        break
                if not clear:
                    break
            if clear:
                refs: dict[str, dict[str, str] | None] = {lv.value: None for lv in LEVEL_ORDER}
                refs[li.level.value] = _ref(index, li.codes[v])
                for up, anc in li.ancestors.items():
                    refs[up.value] = _ref(index, anc[v])
                return {
                    **refs,
                    "method": Method.inside,
                    "reason": "inside",
                    "version": index.version,
                    "candidates": [],
                    "distance_m": 0.0,
                    "review": False,
                }
    row = _assign_arrays(index, [x], [y], tolerance_m=tolerance_m, near_border_m=near_border_m)
    return {
        "city": _ref(index, row["city_code"][0]),
        "county": _ref(index, row["county_code"][0]),
        "township": _ref(index, row["township_code"][0]),
        "method": row["method"][0],
        "reason": str(row["reason"][0]),
        "version": index.version,
        "candidates": list(row["candidates"][0]),
        "distance_m": float(row["distance_m"][0]),
        "review": bool(row["review"][0]),
    }
