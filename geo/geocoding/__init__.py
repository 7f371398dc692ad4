"""Address → administrative unit (and point) with precision and confidence, offline first.

`geocode_address` runs the offline pipeline: `AdminIndex.resolve` finds the deepest unit the
address names, then an optional `Gazetteer` upgrades it to a named place's point. Online
geocoders live in `geo.geocoding.providers` (imported on demand: they need httpx and geo.crs).
"""

from __future__ import annotations

from geo.geocoding.admin import AdminIndex, AdminTableError, AdminUnit, normalise_address
from geo.geocoding.conflict import address_point_conflict
from geo.geocoding.gazetteer import Gazetteer, GazetteerError, Place, PlaceKind
from geo.geocoding.result import AddressError, AdminLevel, Candidate, GeocodeResult, Precision

__all__ = [
    "AddressError",
    "AdminIndex",
    "AdminLevel",
    "AdminTableError",
    "AdminUnit",
    "Candidate",
    "Gazetteer",
    "GazetteerError",
    "GeocodeResult",
    "Place",
    "PlaceKind",
    "Precision",
    "address_point_conflict",
    "geocode_address",
    "normalise_address",
]


def geocode_address(
    address: str, admin: AdminIndex, gazetteer: Gazetteer | None = None
) -> GeocodeResult:
    """Geocode one address offline.

    Parameters
    ----------
    address
        Free text, e.g. ``'江苏省徐州市铜山区柳新镇某某村东200米'``.
    admin
        The administrative index.
    gazetteer
        Optional named places; a place found in the remainder within the resolved unit gives
        precision ``poi`` and a point.

    Returns
    -------
    GeocodeResult
        Precision ``none`` when nothing was recognised.

    Raises
    ------
    AddressError
        If `address` is not a string or is empty.
    """
    result = admin.resolve(address)
    if gazetteer is not None:
        result = gazetteer.refine(result, admin)
    return result
