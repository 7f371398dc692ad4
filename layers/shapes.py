"""The only bridge between database geometry and shapely.

Nothing else in leadgrid touches WKB/WKT of the database: read with :func:`to_shape`, write with
:func:`from_shape`, and bulk-read with :func:`wkb_array_to_shapes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from geoalchemy2.elements import WKBElement
from geoalchemy2.shape import from_shape as _from_shape
from geoalchemy2.shape import to_shape as _to_shape
from shapely.geometry.base import BaseGeometry

from layers.models import SRID


def to_shape(element: WKBElement | None) -> BaseGeometry | None:
    """Database geometry → shapely geometry (``None`` stays ``None``)."""
    if element is None:
        return None
    return _to_shape(element)


def from_shape(geometry: BaseGeometry | None) -> WKBElement | None:
    """Shapely geometry → database geometry in the storage SRID (``None`` stays ``None``)."""
    if geometry is None:
        return None
    return _from_shape(geometry, srid=SRID, extended=True)


def as_multipolygon(geometry: BaseGeometry) -> BaseGeometry:
    """Polygons are stored as MultiPolygons so every jurisdiction row has one type."""
    if geometry.geom_type == "Polygon":
        return shapely.MultiPolygon([geometry])
    if geometry.geom_type == "MultiPolygon":
        return geometry
    if geometry.geom_type == "GeometryCollection":
        parts = [g for g in shapely.get_parts(geometry) if g.geom_type in ("Polygon", "MultiPolygon")]
        return shapely.MultiPolygon(list(shapely.get_parts(shapely.union_all(parts))))
    raise ValueError(f"geometry type {geometry.geom_type} cannot be a jurisdiction")


def point_ewkt(lon: float, lat: float) -> str:
    """EWKT of a storage point, for set-based inserts (``ST_GeomFromEWKT`` on both backends)."""
    return f"SRID={SRID};POINT({lon!r} {lat!r})"


def wkb_array_to_shapes(values: Sequence[Any]) -> np.ndarray:
    """Bulk-decode database geometry values (WKBElement, bytes or hex) to shapely geometries."""
    raw: list[bytes | None] = []
    for v in values:
        if v is None:
            raw.append(None)
        elif isinstance(v, WKBElement):
            raw.append(bytes(v.data) if not isinstance(v.data, str) else bytes.fromhex(v.data))
        elif isinstance(v, str):
            raw.append(bytes.fromhex(v))
        else:
            raw.append(bytes(v))
    return shapely.from_wkb(np.array(raw, dtype=object))
