"""Address resolution over the active boundary version, for leads that arrive with text only.

The offline :class:`geo.geocoding.AdminIndex` is built from the active version's jurisdictions
(their names and the short aliases derived from them) and cached per database and version, like
the assignment index. When a lead has both a point and an address that names a different
township (or county), intake flags a ``conflict`` for the dispatcher instead of choosing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from geo.geocoding import AddressError, AdminIndex, Precision, address_point_conflict, geocode_address
from layers.jurisdictions import active_version, layer_frame


@dataclass
class AddressResolver:
    """Callable used by :func:`layers.leads.intake` (see ``Geocoder.resolve`` there)."""

    admin: AdminIndex

    def __call__(self, address: str) -> dict[str, Any] | None:
        try:
            result = geocode_address(address, self.admin)
        except AddressError:
            return None
        if result.precision == Precision.NONE:
            return None
        codes = dict(result.codes)

        def conflict_with(township: str | None, county: str | None) -> str | None:
            return address_point_conflict(result, township, county, admin=self.admin)

        return {
            "codes": codes,
            "precision": result.precision.value,
            "confidence": float(result.confidence),
            "lon": result.lon,
            "lat": result.lat,
            "conflict_with": conflict_with,
        }


_lock = threading.Lock()
_cache: dict[str, tuple[int, AddressResolver]] = {}


def resolver_for(session: Session) -> AddressResolver | None:
    """The resolver of the active version (``None`` when no version is active)."""
    version = active_version(session)
    if version is None:
        return None
    key = str(session.get_bind().engine.url)
    hit = _cache.get(key)
    if hit is None or hit[0] != version.id:
        with _lock:
            frame = layer_frame(session, version.id)
            records = [
                # pandas 3 stores missing strings as NaN: only real strings are parent codes.
                {"code": c, "name": n, "level": lvl, "parent_code": p if isinstance(p, str) and p else None}
                for c, n, lvl, p in zip(frame.code, frame.name, frame.level, frame.parent_code, strict=True)
            ]
            hit = _cache[key] = (version.id, AddressResolver(AdminIndex.from_records(records)))
    return hit[1]


def clear() -> None:
    """Forget cached resolvers (tests)."""
    with _lock:
        _cache.clear()
