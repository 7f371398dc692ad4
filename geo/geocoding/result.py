"""The result of geocoding one address, shared by the offline matcher and online providers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["LEVELS", "AddressError", "AdminLevel", "Candidate", "GeocodeResult", "Precision"]


class AdminLevel(StrEnum):
    """Administrative levels, from the top down."""

    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"

    @property
    def depth(self) -> int:
        """0 for province … 3 for township."""
        return LEVELS.index(self)


#: The levels in hierarchical order; `GeocodeResult.codes` has exactly these keys.
LEVELS: tuple[AdminLevel, ...] = (
    AdminLevel.PROVINCE,
    AdminLevel.CITY,
    AdminLevel.COUNTY,
    AdminLevel.TOWNSHIP,
)


class Precision(StrEnum):
    """How finely a result locates the address.

    ``NONE`` means nothing in the address was recognised (code is None, confidence 0);
    ``POI`` means a point from a gazetteer or an online provider (lon/lat are set).
    """

    NONE = "none"
    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"
    POI = "poi"

    @classmethod
    def of_level(cls, level: AdminLevel) -> Precision:
        """The precision that a unit of `level` gives."""
        return cls(level.value)


class AddressError(ValueError):
    """The address itself is unusable (not a string, or empty after normalisation)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One alternative the geocoder could not rule out (an admin unit or a named place)."""

    code: str
    name: str
    level: str


@dataclass(frozen=True, slots=True)
class GeocodeResult:
    """Where an address points, how precisely, and how sure we are.

    Attributes
    ----------
    address
        The input as given.
    code, level
        The deepest administrative unit identified (None when nothing was recognised).
    codes
        Code per level, keys ``province``, ``city``, ``county``, ``township`` (None where unknown).
        Ancestors of `code` are filled in from the hierarchy even when the text skipped them.
    precision
        See `Precision`.
    confidence
        0..1; see `geo.geocoding.admin` for the formula of the offline matcher and each provider
        class for its own.
    matched
        The substrings (after normalisation) recognised as admin units, then the place name.
    remainder
        The normalised text after the last recognised unit, e.g. ``'某某村东200米'``.
    lon, lat
        Storage lon/lat (EPSG:4326) when a point is known, else None.
    candidates
        Alternatives when the address was ambiguous or contradicted itself.
    notes
        Human-readable explanations (ambiguity, hierarchy conflict, offset applied …).
    source
        ``'offline'`` or the provider name.
    place
        Name of the gazetteer place matched, if any.
    offset_m
        (east, north) metres parsed from a phrase such as ``东200米`` after the place, if any.
    """

    address: str
    code: str | None
    level: AdminLevel | None
    codes: dict[str, str | None]
    precision: Precision
    confidence: float
    matched: tuple[str, ...] = ()
    remainder: str = ""
    lon: float | None = None
    lat: float | None = None
    candidates: tuple[Candidate, ...] = ()
    notes: tuple[str, ...] = ()
    source: str = "offline"
    place: str | None = None
    offset_m: tuple[float, float] | None = None
    # Not part of equality: purely diagnostic, e.g. the provider's own level label.
    raw_level: str | None = field(default=None, compare=False)


def empty_codes() -> dict[str, str | None]:
    """A fresh ``codes`` mapping with every level unknown."""
    return {level.value: None for level in LEVELS}
