"""Compare the jurisdiction an address names with the one its point was assigned to."""

from __future__ import annotations

from geo.geocoding.admin import AdminIndex
from geo.geocoding.result import GeocodeResult

__all__ = ["address_point_conflict"]


def _label(code: str, admin: AdminIndex | None) -> str:
    if admin is not None and code in admin:
        return f"{admin.unit(code).name} ({code})"
    return code


def address_point_conflict(
    result: GeocodeResult,
    township_code_from_point: str | None,
    county_code_from_point: str | None,
    *,
    admin: AdminIndex | None = None,
) -> str | None:
    """Explain a disagreement between an address and the point assigned to the same lead.

    The comparison is made at the deepest level both sides know: the township when the
    address names one and the point was assigned one, else the county. A dispatcher sees the
    reason and decides; nothing is overridden here.

    Parameters
    ----------
    result
        The geocoded address (its ``codes``).
    township_code_from_point, county_code_from_point
        Where spatial assignment put the lead's point (None where unknown).
    admin
        Optional index, used only to print unit names next to codes.

    Returns
    -------
    str or None
        A human-readable reason, or None when they agree or share no level to compare.
    """
    address_township = result.codes.get("township")
    address_county = result.codes.get("county")
    if address_township and township_code_from_point:
        if address_township == township_code_from_point:
            return None
        reason = (
            f"the address names township {_label(address_township, admin)} but the point lies "
            f"in township {_label(township_code_from_point, admin)}"
        )
        if address_county and county_code_from_point and address_county != county_code_from_point:
            reason += (
                f" (and in county {_label(county_code_from_point, admin)}, not "
                f"{_label(address_county, admin)})"
            )
        return reason
    if address_county and county_code_from_point and address_county != county_code_from_point:
        return (
            f"the address names county {_label(address_county, admin)} but the point lies "
            f"in county {_label(county_code_from_point, admin)}"
        )
    return None
