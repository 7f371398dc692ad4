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
Near-border distances are point-to-segment distances in a local tangent plane, over the
segments listed in the boundary cells of a conservative window; an 8 x 8 sub-cell bit mask per
boundary cell and per (cell, segment) skips segments nowhere near the point without arithmetic.

:func:`lookup` answers one point with the same grid in plain Python (tens of microseconds): the
same exact GEOS predicates on the same prepared polygons, the same windows, and the same
floating-point operations in the same order, so its answer is identical to :func:`assign` on
that point, field by field (``tests/geo/test_assign.py`` checks this property).
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
from shapely import lib as _shapely_lib

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
# Above this many boundary segments near a point, lookup() measures distances with numpy
# instead of a Python loop (both give the same bits).
_SCALAR_SEGMENTS = 64
# Widening of the near-border search window, relative, to absorb the local metre/degree scale
# approximation (accurate to ~1e-5 over a few hundred metres).
_WINDOW_MARGIN = 1.001

# The ufuncs behind shapely.intersects_xy / contains_xy, minus their per-call prepare(): the
# index's polygons are prepared once at build. One point at a time this halves the cost.
_intersects_xy = _shapely_lib.intersects_xy
_contains_xy = _shapely_lib.contains_xy

_WGS84_A = 6378137.0
_WGS84_E2 = 6.69437999014e-3


def _metres_per_degree(lat: Any) -> tuple[Any, Any]:
    """Local (lon, lat) metres per degree on the WGS84 ellipsoid.

    Keep in step with :func:`_metres_per_degree1`, its one-point twin used by :func:`lookup`.
    """
    phi = np.radians(lat)
    s = np.sin(phi)
    w = np.sqrt(1.0 - _WGS84_E2 * (s * s))
    m_lat = _WGS84_A * (1.0 - _WGS84_E2) / (w * w * w) * (math.pi / 180.0)
    m_lon = _WGS84_A / w * np.cos(phi) * (math.pi / 180.0)
    return m_lon, m_lat


def _metres_per_degree1(lat: float) -> tuple[float, float]:
    """:func:`_metres_per_degree` for one latitude, bit for bit: the same operations in the same
    order; only sin and cos go through numpy (the basic operations and sqrt are correctly
    rounded in Python as in numpy, and radians is the same multiplication by pi / 180)."""
    phi = math.radians(lat)
    s = float(np.sin(phi))
    w = math.sqrt(1.0 - _WGS84_E2 * (s * s))
    m_lat = _WGS84_A * (1.0 - _WGS84_E2) / (w * w * w) * (math.pi / 180.0)
    m_lon = _WGS84_A / w * float(np.cos(phi)) * (math.pi / 180.0)
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


def _expand_pos(offsets: IntArray, rows: IntArray) -> tuple[IntArray, IntArray]:
    """Like _expand_csr, but the positions in the CSR value array instead of the values."""
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    owner = np.repeat(np.arange(rows.size, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    pos = np.arange(owner.size, dtype=np.int64) - np.repeat(first - starts, counts)
    return owner, pos


# Boundary cells are split into _SUB x _SUB sub-cells; a 64-bit mask per (cell, segment) and
# per cell records which sub-cells the segments' bounding boxes touch, so that the near-border
# search skips, without arithmetic, every segment that is nowhere near a point's window.
_SUB = 8
_XBITS = np.array(
    [[((1 << (b + 1)) - (1 << a)) if a <= b else 0 for b in range(_SUB)] for a in range(_SUB)],
    dtype=np.uint64,
)
_YROWS = np.array(
    [[sum(1 << (8 * r) for r in range(a, b + 1)) for b in range(_SUB)] for a in range(_SUB)],
    dtype=np.uint64,
)

_XBITS_L: list[list[int]] = _XBITS.tolist()
_YROWS_L: list[list[int]] = _YROWS.tolist()


def _rect_mask(
    lo_x: npt.NDArray[Any],
    hi_x: npt.NDArray[Any],
    lo_y: npt.NDArray[Any],
    hi_y: npt.NDArray[Any],
    cx0: npt.NDArray[Any],
    cy0: npt.NDArray[Any],
    sub: float,
) -> npt.NDArray[np.uint64]:
    """Sub-cell mask of the rectangles [lo_x, hi_x] x [lo_y, hi_y] within cells at (cx0, cy0).

    The sub-cell of a coordinate v is floor((v - cx0) / sub) clipped to the cell, a monotone
    function: a point inside two rectangles has its sub-cell set in both masks.
    """
    last = _SUB - 1
    sx0 = np.clip(np.floor((lo_x - cx0) / sub), 0, last).astype(np.intp)
    sx1 = np.clip(np.floor((hi_x - cx0) / sub), 0, last).astype(np.intp)
    sy0 = np.clip(np.floor((lo_y - cy0) / sub), 0, last).astype(np.intp)
    sy1 = np.clip(np.floor((hi_y - cy0) / sub), 0, last).astype(np.intp)
    # Row bits (< 256) times a sum of distinct powers of 256: no carries, no overflow.
    return _XBITS[sx0, sx1] * _YROWS[sy0, sy1]


def _intersecting_pairs(
    geoms: npt.NDArray[np.object_], x: FloatArray, y: FloatArray
) -> tuple[IntArray, IntArray]:
    """(point, polygon) for every point (x, y) that a polygon intersects (covers).

    The points go in the tree and the polygons are the queries: STRtree prepares each query
    geometry once, so every test is a prepared point-in-polygon test (a tree of polygons
    queried with points would test each point against an unprepared polygon, O(vertices)).
    """
    poly, pt = shapely.STRtree(shapely.points(x, y)).query(geoms, predicate="intersects")
    return pt.astype(np.int64), poly.astype(np.int64)


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
    seg_mask: npt.NDArray[np.uint64]  # per seg_idx entry: sub-cells its bounding box touches
    cell_mask: npt.NDArray[np.uint64]  # per mixed cell: union of its entries' masks
    metric_geoms: npt.NDArray[np.object_]
    tree: shapely.STRtree = field(repr=False)
    # True where the cell or one of its 8 neighbours is a boundary cell: a one-gather pre-filter
    # for "is any boundary within less than a cell of this point".
    mixed3: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # Smallest metres per degree of longitude / latitude anywhere in the grid: a window of
    # r / win_mx by r / win_my degrees holds everything within r metres of any point in it.
    win_mx: float = 0.0
    win_my: float = 0.0
    rank_list: list[int] = field(default_factory=list, repr=False)
    # codes / ancestor codes with None appended: indexing with -1 (no polygon) gives None.
    codes_ext: npt.NDArray[np.object_] = field(default_factory=lambda: np.empty(0, dtype=object))
    ancestors_ext: dict[Level, npt.NDArray[np.object_]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = (self.grid <= -2).reshape(self.ny, self.nx)
        d = m.copy()
        d[1:, :] |= m[:-1, :]
        d[:-1, :] |= m[1:, :]
        e = d.copy()
        e[:, 1:] |= d[:, :-1]
        e[:, :-1] |= d[:, 1:]
        self.mixed3 = e.ravel()
        y1 = self.y0 + self.ny * self.cell
        lat_hi = min(max(abs(self.y0), abs(y1)), 89.0)
        lat_lo = 0.0 if self.y0 <= 0.0 <= y1 else min(abs(self.y0), abs(y1), 89.0)
        # m_lon falls and m_lat grows with |latitude|.
        self.win_mx = float(_metres_per_degree(lat_hi)[0])
        self.win_my = float(_metres_per_degree(lat_lo)[1])
        self.rank_list = self.rank.tolist()
        self.codes_ext = np.append(self.codes, np.empty(1, dtype=object))
        self.ancestors_ext = {
            up: np.append(anc, np.empty(1, dtype=object)) for up, anc in self.ancestors.items()
        }

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
        r_idx, p_idx = _intersecting_pairs(
            geoms, x0 + (run_start % nx + 0.5) * cell, y0 + (run_start // nx + 0.5) * cell
        )
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
        c_idx, cp_idx = _intersecting_pairs(
            geoms, x0 + (mixed_cells % nx + 0.5) * cell, y0 + (mixed_cells // nx + 0.5) * cell
        )
        cand_keys = np.concatenate([mixed_no[seg_cell], c_idx])
        cand_vals = np.concatenate([seg_poly[seg_of], cp_idx])
        pairs = np.unique(cand_keys * n + cand_vals)
        cand_off, cand_idx = _csr(pairs // n, pairs % n, mixed_cells.size)
        seg_off, seg_idx = _csr(mixed_no[seg_cell], seg_of, mixed_cells.size)
        entry_row = np.repeat(np.arange(mixed_cells.size, dtype=np.int64), np.diff(seg_off))
        entry_cell = mixed_cells[entry_row]
        sxy = seg_xy[seg_idx]
        seg_mask = _rect_mask(
            np.minimum(sxy[:, 0], sxy[:, 2]) - _EPS_DEG,
            np.maximum(sxy[:, 0], sxy[:, 2]) + _EPS_DEG,
            np.minimum(sxy[:, 1], sxy[:, 3]) - _EPS_DEG,
            np.maximum(sxy[:, 1], sxy[:, 3]) + _EPS_DEG,
            float(x0) + (entry_cell % nx) * float(cell),
            float(y0) + (entry_cell // nx) * float(cell),
            float(cell) / _SUB,
        )
        del sxy
        cell_mask = np.zeros(mixed_cells.size, dtype=np.uint64)
        np.bitwise_or.at(cell_mask, entry_row, seg_mask)
        grid[mixed_cells] = -2 - np.arange(mixed_cells.size)

        shapely.prepare(geoms)
        # GEOS builds a prepared polygon's point locator on its first query; build them all now
        # so that no lookup() pays for it (one throw-away test of its bounding box centre: a
        # point outside the envelope would be rejected before the locator is needed).
        gb = shapely.bounds(geoms)
        shapely.intersects_xy(geoms, (gb[:, 0] + gb[:, 2]) / 2, (gb[:, 1] + gb[:, 3]) / 2)

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
            seg_mask=seg_mask,
            cell_mask=cell_mask,
            seg_idx=seg_idx,
            seg_xy=seg_xy,
            seg_poly=seg_poly,
            metric_geoms=metric_geoms,
            tree=shapely.STRtree(metric_geoms),
        )

    # ---------------------------------------------------------------- queries

    def cell_index(self, lon: FloatArray, lat: FloatArray) -> IntArray:
        """Flat grid cell of every point, -1 outside the grid."""
        fx = (lon - self.x0) / self.cell
        fy = (lat - self.y0) / self.cell
        inb = (fx >= 0) & (fx < self.nx) & (fy >= 0) & (fy < self.ny)
        # Truncation equals floor for non-negative values.
        ci = fy.astype(np.int64)
        ci *= self.nx
        ci += fx.astype(np.int64)
        if not inb.all():
            ci[~inb] = -1
        return ci

    def cells_of(self, lon: FloatArray, lat: FloatArray) -> npt.NDArray[np.int32]:
        """Grid value of every point's cell (-1, "empty", outside the grid)."""
        ci = self.cell_index(lon, lat)
        v = self.grid[ci]
        v[ci < 0] = -1
        return v

    def covering(
        self, lon: FloatArray, lat: FloatArray
    ) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
        """Exact covers.

        Returns (chosen polygon or -1, count, multi-cover pts, their polys, cell index).
        """
        ci = self.cell_index(lon, lat)
        v = self.grid[ci]
        v[ci < 0] = -1
        chosen = v.astype(np.int64)
        chosen[v < 0] = -1
        count = (v >= 0).astype(np.int64)
        mixed_pts = np.flatnonzero(v <= -2)
        empty = np.empty(0, dtype=np.int64)
        if mixed_pts.size == 0:
            return chosen, count, empty, empty, ci
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
            np.concatenate([[0], bounds]).tolist(),
            np.concatenate([bounds, [poly.size]]).tolist(),
            strict=True,
        ):
            sel = pts[s:e]
            hit[s:e] = _intersects_xy(self.geoms[poly[s]], lon[sel], lat[sel])
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
        return chosen, count, pts[multi], poly[multi], ci

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
        self,
        lon: FloatArray,
        lat: FloatArray,
        radius_m: float,
        ci: IntArray | None = None,
        among: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[IntArray, IntArray, FloatArray]:
        """(point, polygon, boundary distance) for every polygon boundary within radius_m.

        ``ci``, optional, is :meth:`cell_index` of the points (saves recomputing it); ``among``,
        optional, limits the search to the points where it is True.
        """
        empty = np.empty(0, dtype=np.int64)
        # Pass 1, cheap and conservative: a window sized for the grid's smallest metres per
        # degree tells which points have any boundary cell nearby.
        sel = self._window_has_mixed(
            lon, lat, radius_m / self.win_mx, radius_m / self.win_my, ci, among
        )
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
        lo_x = lon - dx
        hi_x = lon + dx
        lo_y = lat - dy
        hi_y = lat + dy
        sub = self.cell / _SUB
        for di in range(int((i1 - i0).max(initial=0)) + 1):
            for dj in range(int((j1 - j0).max(initial=0)) + 1):
                ok = np.flatnonzero((i0 + di <= i1) & (j0 + dj <= j1))
                ci = i0[ok] + di
                cj = j0[ok] + dj
                v = self.grid[cj * self.nx + ci]
                is_mixed = v <= -2
                if not is_mixed.any():
                    continue
                ok, ci, cj = ok[is_mixed], ci[is_mixed], cj[is_mixed]
                row = (-2 - v[is_mixed]).astype(np.int64)
                # Sub-cells of this cell that the point's window touches; pairs whose masks
                # do not meet are farther than radius_m (conservatively) and are never formed.
                wm = _rect_mask(
                    lo_x[ok],
                    hi_x[ok],
                    lo_y[ok],
                    hi_y[ok],
                    self.x0 + ci * self.cell,
                    self.y0 + cj * self.cell,
                    sub,
                )
                meet = (self.cell_mask[row] & wm) != 0
                ok, row, wm = ok[meet], row[meet], wm[meet]
                owner, pos = _expand_pos(self.seg_off, row)
                keep = (self.seg_mask[pos] & wm[owner]) != 0
                pts_l.append(ok[owner[keep]])
                segs_l.append(self.seg_idx[pos[keep]])
        if not pts_l:
            return empty, empty, np.empty(0)
        pts = np.concatenate(pts_l)
        seg = np.concatenate(segs_l)
        s = self.seg_xy[seg]
        ml = m_lon[pts]
        mt = m_lat[pts]
        px = lon[pts]
        py = lat[pts]
        # Point-to-segment distance in a local tangent plane (metres). The same operations, in
        # the same order, as _LevelIndex.near1 (lookup) does on Python floats: keep them in step.
        ax = (s[:, 0] - px) * ml
        ay = (s[:, 1] - py) * mt
        ex = (s[:, 2] - px) * ml - ax
        ey = (s[:, 3] - py) * mt - ay
        ll = ex * ex + ey * ey
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(ll > 0, -(ax * ex + ay * ey) / ll, 0.0)
        np.clip(t, 0.0, 1.0, out=t)
        qx = ax + t * ex
        qy = ay + t * ey
        d = np.sqrt(qx * qx + qy * qy)
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

    def _window_has_mixed(
        self,
        lon: FloatArray,
        lat: FloatArray,
        dx: float,
        dy: float,
        ci: IntArray | None = None,
        among: npt.NDArray[np.bool_] | None = None,
    ) -> IntArray:
        """Indices of points whose [lon +- dx] x [lat +- dy] window meets a boundary cell.

        ``ci``, optional, is :meth:`cell_index` of the points (saves recomputing it); ``among``,
        optional, limits the answer to the points where it is True.
        """
        dx = dx * _WINDOW_MARGIN + 2 * _EPS_DEG
        dy = dy * _WINDOW_MARGIN + 2 * _EPS_DEG
        if dx < self.cell and dy < self.cell:
            # The window lies within the 3x3 block around the point's cell: one gather on the
            # dilated mask discards most points before the exact window test.
            if ci is None:
                ci = self.cell_index(lon, lat)
            keep = self.mixed3[ci]
            keep[ci < 0] = True  # outside the grid: decided by the exact test
            if among is not None:
                keep &= among
            pre = np.flatnonzero(keep)
        elif among is not None:
            pre = np.flatnonzero(among)
        else:
            return self._window_exact(lon, lat, dx, dy)
        if pre.size == 0:
            return pre
        return pre[self._window_exact(lon[pre], lat[pre], dx, dy)]

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

    # ---------------------------------------------------------------- scalar queries (lookup)
    #
    # One point, Python floats. Each mirrors a vectorised query above and must give exactly its
    # answer: same exact predicates (shapely on the same prepared geometries), same conservative
    # windows, and the same floating-point operations in the same order for distances.

    def covering1(self, x: float, y: float) -> tuple[int, list[int]]:
        """Exact covers of one point: (chosen polygon or -1, covering polygons by rank)."""
        fx = (x - self.x0) / self.cell
        fy = (y - self.y0) / self.cell
        if not (0 <= fx < self.nx and 0 <= fy < self.ny):
            return -1, []
        v: int = self.grid.item(int(fy) * self.nx + int(fx))
        if v >= 0:
            return v, [v]
        if v == -1:
            return -1, []
        c = -2 - v
        cands = self.cand_idx[self.cand_off.item(c) : self.cand_off.item(c + 1)].tolist()
        geoms = self.geoms
        hits = [p for p in cands if _intersects_xy(geoms[p], x, y)]
        if len(hits) > 1:
            hits.sort(key=self.rank_list.__getitem__)
        return (hits[0] if hits else -1), hits

    def window1(self, x: float, y: float, dx: float, dy: float) -> bool:
        """Scalar :meth:`_window_has_mixed`: does the window around (x, y) meet a boundary cell."""
        dx = dx * _WINDOW_MARGIN + 2 * _EPS_DEG
        dy = dy * _WINDOW_MARGIN + 2 * _EPS_DEG
        fx = (x - self.x0) / self.cell
        fy = (y - self.y0) / self.cell
        rx = dx / self.cell
        ry = dy / self.cell
        last_x = self.nx - 1
        last_y = self.ny - 1
        i0 = min(max(math.floor(fx - rx), 0), last_x)
        i1 = min(max(math.floor(fx + rx), 0), last_x)
        j0 = min(max(math.floor(fy - ry), 0), last_y)
        j1 = min(max(math.floor(fy + ry), 0), last_y)
        return self._any_mixed(i0, i1, j0, j1)

    def _any_mixed(self, i0: int, i1: int, j0: int, j1: int) -> bool:
        grid = self.grid
        nx = self.nx
        for j in range(j0, j1 + 1):
            base = j * nx
            for i in range(i0, i1 + 1):
                if grid.item(base + i) <= -2:
                    return True
        return False

    def near1(self, x: float, y: float, radius_m: float) -> dict[int, float]:
        """Scalar :meth:`near_pairs`: {polygon: boundary distance} for boundaries within radius_m."""
        # Cheap conservative pass first (the same as near_pairs' first pass): most points have no
        # boundary cell nearby and need no trigonometry at all.
        if not self.window1(x, y, radius_m / self.win_mx, radius_m / self.win_my):
            return {}
        ml, mt = _metres_per_degree1(y)
        dx = radius_m * _WINDOW_MARGIN / ml + _EPS_DEG
        dy = radius_m * _WINDOW_MARGIN / mt + _EPS_DEG
        last_x = self.nx - 1
        last_y = self.ny - 1
        i0 = min(max(math.floor((x - dx - self.x0) / self.cell), 0), last_x)
        i1 = min(max(math.floor((x + dx - self.x0) / self.cell), 0), last_x)
        j0 = min(max(math.floor((y - dy - self.y0) / self.cell), 0), last_y)
        j1 = min(max(math.floor((y + dy - self.y0) / self.cell), 0), last_y)
        grid = self.grid
        seg_off = self.seg_off
        parts: list[IntArray] = []
        sub = self.cell / _SUB
        last = _SUB - 1
        lo_x = x - dx
        hi_x = x + dx
        lo_y = y - dy
        hi_y = y + dy
        for j in range(j0, j1 + 1):
            base = j * self.nx
            cy0 = self.y0 + j * self.cell
            sy0 = min(max(math.floor((lo_y - cy0) / sub), 0), last)
            sy1 = min(max(math.floor((hi_y - cy0) / sub), 0), last)
            for i in range(i0, i1 + 1):
                v = grid.item(base + i)
                if v <= -2:
                    c = -2 - v
                    # Skip the cell if the window's sub-cells miss all of its segments (the
                    # same conservative test as near_pairs, see _rect_mask).
                    cx0 = self.x0 + i * self.cell
                    sx0 = min(max(math.floor((lo_x - cx0) / sub), 0), last)
                    sx1 = min(max(math.floor((hi_x - cx0) / sub), 0), last)
                    wm = _XBITS_L[sx0][sx1] * _YROWS_L[sy0][sy1]
                    if self.cell_mask.item(c) & wm:
                        parts.append(self.seg_idx[seg_off.item(c) : seg_off.item(c + 1)])
        if not parts:
            return {}
        seg = np.concatenate(parts) if len(parts) > 1 else parts[0]
        out: dict[int, float] = {}
        if seg.size > _SCALAR_SEGMENTS:
            # Many segments: numpy beats the Python loop (same operations, see near_pairs).
            s = self.seg_xy[seg]
            a_x = (s[:, 0] - x) * ml
            a_y = (s[:, 1] - y) * mt
            e_x = (s[:, 2] - x) * ml - a_x
            e_y = (s[:, 3] - y) * mt - a_y
            l2 = e_x * e_x + e_y * e_y
            with np.errstate(invalid="ignore", divide="ignore"):
                tt = np.where(l2 > 0, -(a_x * e_x + a_y * e_y) / l2, 0.0)
            np.clip(tt, 0.0, 1.0, out=tt)
            q_x = a_x + tt * e_x
            q_y = a_y + tt * e_y
            dd = np.sqrt(q_x * q_x + q_y * q_y)
            keep = np.flatnonzero(dd <= radius_m)
            for p, d in zip(self.seg_poly[seg[keep]].tolist(), dd[keep].tolist(), strict=True):
                if p not in out or d < out[p]:
                    out[p] = d
            return out
        sqrt = math.sqrt
        # A segment with both ends beyond the radius on one side (with a margin far above any
        # rounding) cannot be within it: skip it before the full computation.
        far = radius_m * (1.0 + 1e-9) + 1e-9
        for (s0, s1, s2, s3), p in zip(
            self.seg_xy[seg].tolist(), self.seg_poly[seg].tolist(), strict=True
        ):
            # Exactly near_pairs' operations (see there).
            ax = (s0 - x) * ml
            bx = (s2 - x) * ml
            if (ax > far and bx > far) or (ax < -far and bx < -far):
                continue
            ay = (s1 - y) * mt
            by = (s3 - y) * mt
            if (ay > far and by > far) or (ay < -far and by < -far):
                continue
            ex = bx - ax
            ey = by - ay
            ll = ex * ex + ey * ey
            t = -(ax * ex + ay * ey) / ll if ll > 0 else 0.0
            t = 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)
            qx = ax + t * ex
            qy = ay + t * ey
            d = sqrt(qx * qx + qy * qy)
            if d <= radius_m and (p not in out or d < out[p]):
                out[p] = d
        return out


    def nearest1(self, xm: float, ym: float, tolerance_m: float) -> tuple[int, float]:
        """Scalar :meth:`nearest`: (polygon or -1, metric distance or NaN) within tolerance_m.

        ``STRtree.query_nearest`` returns every polygon at the minimum ``GEOSDistance(point,
        polygon)``; here the candidates come from an envelope query widened by the tolerance
        (a superset: envelope distance <= distance) and the same GEOS distance decides.
        """
        r = tolerance_m * (1.0 + 1e-9) + 1e-6
        cand = self.tree.query(shapely.box(xm - r, ym - r, xm + r, ym + r))
        best = -1
        best_d = math.nan
        if cand.size == 0:
            return best, best_d
        dist = shapely.distance(shapely.Point(xm, ym), self.metric_geoms[cand])
        rank = self.rank_list
        for p, d in zip(cand.tolist(), dist.tolist(), strict=True):
            if d <= tolerance_m and (
                best < 0 or d < best_d or (d == best_d and rank[p] < rank[best])
            ):
                best = p
                best_d = d
        return best, best_d

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
        (list of ``{"code", "distance_m"}`` ranked by distance, empty unless flagged; rows
        without candidates share one read-only empty list: copy it before editing),
        ``review`` (bool).

    Raises
    ------
    geo.crs.CoordinateError
        For NaN, infinite or out-of-range coordinates (naming the first one).
    """
    out = _assign_arrays(index, lon, lat, tolerance_m=tolerance_m, near_border_m=near_border_m)
    # Explicit object dtype: pandas >= 3 would otherwise infer its string dtype and turn the
    # documented None into NaN. copy=False also skips consolidating the object columns into one
    # 2-D block (a full copy of six million-row columns).
    return pd.DataFrame(
        {
            k: pd.Series(v, dtype=object if k in _OBJECT_COLUMNS else None, copy=False)
            for k, v in out.items()
        },
        copy=False,
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
    # Nothing made here can form a reference cycle, but a few hundred thousand small lists and
    # dicts would trigger the cyclic GC many times over, each pass walking every live object of
    # the caller as well: pausing it is safe and saves a large share of the run time.
    gc_on = gc.isenabled()
    gc.disable()
    try:
        return _assign_arrays_nogc(
            index, lon, lat, tolerance_m=tolerance_m, near_border_m=near_border_m
        )
    finally:
        if gc_on:
            gc.enable()


class _NoCandidates(list[Any]):
    """The shared, read-only empty ``candidates`` list of every row that has none.

    A million separate empty lists would cost more than the rest of the assignment; sharing one
    is safe only because it cannot be changed: every mutating method raises.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "candidates: this empty list is shared by all rows without candidates and is "
            "read-only; copy it first (list(row['candidates']))"
        )

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, ())


_NO_CANDIDATES = _NoCandidates()
# Method code per min(count of covering polygons, 2): 0 -> nearest, 1 -> inside, 2 -> border.
_METHOD_OF_COUNT = np.array([2, 0, 1], dtype=np.int8)


def _method_codes(chosen: IntArray, count: IntArray) -> npt.NDArray[np.int8]:
    """Index into _METHODS per point: inside, border, nearest or (chosen < 0) unassigned."""
    m = _METHOD_OF_COUNT[np.minimum(count, 2)]
    m[chosen < 0] = 3
    return m


def _nearest_fill(
    index: BoundaryIndex,
    li: _LevelIndex,
    px: FloatArray,
    py: FloatArray,
    chosen: IntArray,
    near_d: FloatArray,
    tolerance_m: float,
    ci: IntArray | None,
) -> None:
    """Give points covered by nothing the nearest polygon within tolerance (in place)."""
    out_local = np.flatnonzero(chosen < 0)
    if out_local.size == 0 or not tolerance_m > 0:
        return
    # Only points with a boundary cell within tolerance can be near anything.
    out_local = out_local[
        li._window_has_mixed(
            px[out_local],
            py[out_local],
            tolerance_m / li.win_mx,
            tolerance_m / li.win_my,
            None if ci is None else ci[out_local],
        )
    ]
    if out_local.size:
        xm, ym = index._to_metric.transform(px[out_local], py[out_local])
        nc, nd = li.nearest(np.asarray(xm), np.asarray(ym), tolerance_m)
        chosen[out_local] = nc
        near_d[out_local] = nd


def _assign_arrays_nogc(
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
    reasons: dict[int, str] = {}  # row -> reason, for the few rows not explained by method
    cands: dict[int, list[dict[str, Any]]] = {}

    # The deepest level sees every point: whole-array operations, no gathers or scatters.
    deepest = index.levels[-1]
    li = index._by_level[deepest]
    chosen, count, multi_pts, multi_poly, ci = li.covering(x, y)
    near_d = np.where(chosen >= 0, 0.0, np.nan)
    _nearest_fill(index, li, x, y, chosen, near_d, tolerance_m, ci)
    method = _method_codes(chosen, count)
    codes_out: dict[Level, npt.NDArray[np.object_]] = {}
    for lv in LEVEL_ORDER:
        if lv == deepest:
            codes_out[lv] = li.codes_ext[chosen]
        elif lv in li.ancestors:
            codes_out[lv] = li.ancestors_ext[lv][chosen]
        else:
            # np.empty on object dtype is already filled with None, and faster than np.full.
            codes_out[lv] = np.empty(n, dtype=object)
    dist = near_d  # 0 inside / border, metres for nearest, NaN unassigned
    review = np.zeros(n, dtype=bool)
    near = np.flatnonzero(method == 2)
    _explain(li, reasons, near, near_d[near], multi_pts, multi_poly, x, y, tolerance_m)
    _near_border(
        li, x, y, ci, chosen, near_d, count, multi_pts, multi_poly, near_border_m, cands, review
    )

    # Upper levels: only the (few) points no deeper jurisdiction took.
    todo = np.flatnonzero(method == 3)
    for lv in reversed(index.levels[:-1]):
        if todo.size == 0:
            break
        li = index._by_level[lv]
        px, py = x[todo], y[todo]
        chosen, count, multi_pts, multi_poly, lci = li.covering(px, py)
        near_d = np.where(chosen >= 0, 0.0, np.nan)
        _nearest_fill(index, li, px, py, chosen, near_d, tolerance_m, lci)
        got = chosen >= 0
        g_pts = todo[got]
        g_poly = chosen[got]
        codes_out[lv][g_pts] = li.codes[g_poly]
        for up, anc in li.ancestors.items():
            codes_out[up][g_pts] = anc[g_poly]
        m = _method_codes(g_poly, count[got])
        method[g_pts] = m
        dist[g_pts] = near_d[got]
        level_reasons: dict[int, str] = {}
        near = np.flatnonzero(m == 2)
        _explain(
            li,
            level_reasons,
            g_pts[near],
            near_d[got][near],
            todo[multi_pts],
            multi_poly,
            x,
            y,
            tolerance_m,
        )
        review[g_pts] = True
        for r, mm in zip(g_pts.tolist(), m.tolist(), strict=True):
            why = level_reasons.get(r, _METHODS[mm].value)
            reasons[r] = f"no {deepest.value} within {tolerance_m:g} m; {lv.value}: {why}"
        todo = todo[~got]
    review[method == 3] = True

    reason = _BASE_REASONS[method]
    if reasons:
        reason[np.fromiter(reasons.keys(), dtype=np.int64, count=len(reasons))] = np.array(
            list(reasons.values()), dtype=object
        )
    candidates = np.empty(n, dtype=object)
    candidates.fill(_NO_CANDIDATES)
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
    near_rows: IntArray,
    near_dist: FloatArray,
    multi_rows: IntArray,
    multi_poly: IntArray,
    x: FloatArray,
    y: FloatArray,
    tolerance_m: float,
) -> None:
    """Write the human-readable reasons for the (few) border and nearest points.

    ``near_rows`` / ``multi_rows`` are rows of the whole input (``x``, ``y``).
    """
    for r, v in zip(near_rows.tolist(), near_dist.tolist(), strict=True):
        reasons[r] = f"nearest jurisdiction within {tolerance_m:g} m ({_fmt_m(v)})"
    if multi_rows.size:
        order = np.lexsort((li.rank[multi_poly], multi_rows))
        mp, mq = multi_rows[order], multi_poly[order]
        # A point strictly inside two polygons is an overlap (broken layer), not a border.
        interior = np.zeros(mp.size, dtype=bool)
        for q in np.unique(mq).tolist():
            sel = mq == q
            interior[sel] = _contains_xy(li.geoms[q], x[mp[sel]], y[mp[sel]])
        bounds = np.flatnonzero(np.diff(mp)) + 1
        for s, e in zip(
            np.concatenate([[0], bounds]).tolist(),
            np.concatenate([bounds, [mp.size]]).tolist(),
            strict=True,
        ):
            names = " and ".join(str(c) for c in li.codes[mq[s:e]])
            where = "overlap" if interior[s:e].sum() >= 2 else "shared border"
            reasons[int(mp[s])] = f"on {where} of {names}; tie-break: lowest code"


def _near_border(
    li: _LevelIndex,
    x: FloatArray,
    y: FloatArray,
    ci: IntArray,
    chosen: IntArray,
    near_d: FloatArray,
    count: IntArray,
    multi_pts: IntArray,
    multi_poly: IntArray,
    radius_m: float,
    candidates: dict[int, list[dict[str, Any]]],
    review: npt.NDArray[np.bool_],
) -> None:
    """Rank the jurisdictions within radius_m of assigned points that have another nearby.

    All arrays are over the whole input (the deepest level sees every point).
    """
    pts, poly, d = li.near_pairs(x, y, radius_m, ci, among=chosen >= 0)
    if pts.size == 0:
        return
    own = chosen[pts]
    # Distance to a polygon that covers the point is 0, not the distance to its boundary.
    n = len(li.codes)
    cnt = count[pts]
    covers = (poly == own) & (cnt >= 1)
    multi = cnt >= 2
    if multi.any():
        covers[multi] |= np.isin(pts[multi] * n + poly[multi], multi_pts * n + multi_poly)
    d = np.where(covers, 0.0, d)
    other = poly != own
    if not other.any():
        return
    flagged = np.unique(pts[other])
    sel = np.isin(pts, flagged)
    # Make sure the assigned jurisdiction is listed with its own distance.
    pts = np.concatenate([pts[sel], flagged])
    poly = np.concatenate([poly[sel], chosen[flagged]])
    d = np.concatenate([d[sel], near_d[flagged]])
    order = np.lexsort((li.rank[poly], d, pts))
    pts, poly, d = pts[order], poly[order], d[order]
    key = pts * n + poly
    # Drop repeats of a polygon (the assigned one may appear twice); keep the first (smallest).
    seen_order = np.lexsort((np.arange(key.size), key))
    dup = np.zeros(key.size, dtype=bool)
    ks = key[seen_order]
    dup[seen_order[1:]] = ks[1:] == ks[:-1]
    keep = ~dup
    pts, poly, d = pts[keep], poly[keep], d[keep]
    codes = li.codes[poly].tolist()
    dl = np.round(d, 2).tolist()
    starts = np.flatnonzero(np.r_[True, pts[1:] != pts[:-1]])
    ends = np.r_[starts[1:], pts.size]
    rows = pts[starts]
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

    A scalar path for interactive use (tens of microseconds): the same grid, exact predicates
    and windows as :func:`assign`, one point at a time, so the answer is always identical to
    ``assign`` on that point (method, codes, reason, candidates, distance and review flag).

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

    Raises
    ------
    geo.crs.CoordinateError
        For a NaN, infinite or out-of-range coordinate.
    ValueError
        For a negative or non-finite ``tolerance_m`` / ``near_border_m``.
    """
    _validate_params(tolerance_m, near_border_m)
    x = float(lon)
    y = float(lat)
    if not (math.isfinite(x) and math.isfinite(y) and abs(x) <= 180.0 and abs(y) <= 90.0):
        _crs.validate_lonlat(x, y)
    deepest = index.levels[-1]
    metric: tuple[float, float] | None = None  # the point in the metric CRS, once needed
    for lv in reversed(index.levels):
        li = index._by_level[lv]
        chosen, hits = li.covering1(x, y)
        near_d = 0.0
        if chosen < 0:
            # Same steps as _assign_arrays: boundary-cell window pre-filter, then the nearest
            # polygon within tolerance in the metric CRS.
            if tolerance_m > 0 and li.window1(
                x, y, tolerance_m / li.win_mx, tolerance_m / li.win_my
            ):
                if metric is None:
                    # pyproj turns scalars into one-element buffers: the PROJ call of arrays.
                    xm, ym = index._to_metric.transform(x, y)
                    metric = (float(xm), float(ym))
                chosen, near_d = li.nearest1(metric[0], metric[1], tolerance_m)
            if chosen < 0:
                continue
        count = len(hits)
        if count == 1:
            method = _M_INSIDE
            reason = "inside"
        elif count == 0:
            method = _M_NEAREST
            reason = f"nearest jurisdiction within {tolerance_m:g} m ({_fmt_m(near_d)})"
        else:
            method = _M_BORDER
            interior = sum(bool(_contains_xy(li.geoms[q], x, y)) for q in hits)
            names = " and ".join(str(li.codes[q]) for q in hits)
            where = "overlap" if interior >= 2 else "shared border"
            reason = f"on {where} of {names}; tie-break: lowest code"
        candidates: list[dict[str, Any]] = []
        if lv is not deepest:
            review = True
            reason = f"no {deepest.value} within {tolerance_m:g} m; {lv.value}: {reason}"
        else:
            candidates = _near_border1(li, x, y, chosen, near_d, hits, near_border_m)
            review = bool(candidates)
        refs: dict[str, dict[str, str] | None] = dict.fromkeys(_LEVEL_KEYS)
        refs[_LEVEL_KEY[lv]] = _ref(index, li.codes[chosen])
        for up, anc in li.ancestors.items():
            refs[_LEVEL_KEY[up]] = _ref(index, anc[chosen])
        return {
            **refs,
            "method": method,
            "reason": reason,
            "version": index.version,
            "candidates": candidates,
            "distance_m": near_d,
            "review": review,
        }
    return {
        **dict.fromkeys(_LEVEL_KEYS),
        "method": _M_UNASSIGNED,
        "reason": _BASE_REASONS[3],
        "version": index.version,
        "candidates": [],
        "distance_m": math.nan,
        "review": True,
    }


# Enum member access is a descriptor call: plain module constants keep lookup() lean.
_M_INSIDE, _M_BORDER, _M_NEAREST, _M_UNASSIGNED = (
    Method.inside,
    Method.border,
    Method.nearest,
    Method.unassigned,
)
_LEVEL_KEY: dict[Level, str] = {lv: lv.value for lv in LEVEL_ORDER}
_LEVEL_KEYS: tuple[str, ...] = tuple(_LEVEL_KEY.values())


def _near_border1(
    li: _LevelIndex,
    x: float,
    y: float,
    own: int,
    own_d: float,
    hits: list[int],
    radius_m: float,
) -> list[dict[str, Any]]:
    """Scalar :func:`_near_border`: the ranked candidates, or [] when nothing else is near."""
    pairs = li.near1(x, y, radius_m)
    if not pairs or all(p == own for p in pairs):
        return []
    # Distance to a polygon that covers the point is 0, not the distance to its boundary.
    best = {p: (0.0 if p in hits else d) for p, d in pairs.items()}
    if own not in best or own_d < best[own]:
        best[own] = own_d
    rank = li.rank_list
    ranked = sorted(best.items(), key=lambda kv: (kv[1], rank[kv[0]]))
    # np.round(d, 2) is rint(d * 100) / 100; Python's round() is round-half-even like rint.
    return [{"code": li.codes[p], "distance_m": round(d * 100.0) / 100.0} for p, d in ranked]
