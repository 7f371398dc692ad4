"""Named places (roads, villages, enterprises, monitoring points) that upgrade an admin match.

After `AdminIndex.resolve` has found the deepest administrative unit an address names, the
rest of the address (the ``remainder``) is scanned for a known place name, longest match
first, among places lying in that unit or its descendants only — so 张庄村 in 柳新镇 is never
confused with a 张庄村 in another county. A unique hit turns the result into precision
``poi`` with the place's point.

An offset phrase right after the place name — ``东200米``, ``西南约1.5公里``, ``北侧300m`` — is
parsed into (east, north) metres and applied as a local metric shift on the WGS84 ellipsoid
(meridian and prime-vertical radii at the place's latitude). For offsets of a few kilometres
this is exact to well under a metre, far below the vagueness of the phrase itself. Diagonals
split the distance equally between the two axes.

Confidence of a ``poi`` result: the admin confidence + 0.10 (capped at 1.0) when the place was
found inside a recognised unit; 0.60 when no unit was recognised and the place name is unique
in the whole gazetteer. A place name shared by several places within the unit does not
upgrade the result; they are listed as candidates instead.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from geo.geocoding.admin import AdminIndex, _longest_first_pattern, normalise_address
from geo.geocoding.result import Candidate, GeocodeResult, Precision

__all__ = ["Gazetteer", "GazetteerError", "Place", "PlaceKind", "parse_offset", "shift_lonlat"]

_POI_BONUS = 0.10
_POI_WITHOUT_ADMIN = 0.60

# WGS84 ellipsoid, for metres → degrees at a given latitude.
_A = 6_378_137.0
_E2 = 6.694379990141317e-3

_DIRECTIONS: dict[str, tuple[float, float]] = {
    "东": (1.0, 0.0),
    "西": (-1.0, 0.0),
    "南": (0.0, -1.0),
    "北": (0.0, 1.0),
    "东北": (math.sqrt(0.5), math.sqrt(0.5)),
    "东南": (math.sqrt(0.5), -math.sqrt(0.5)),
    "西北": (-math.sqrt(0.5), math.sqrt(0.5)),
    "西南": (-math.sqrt(0.5), -math.sqrt(0.5)),
}
_UNIT_METRES = {"米": 1.0, "m": 1.0, "公里": 1000.0, "千米": 1000.0, "km": 1000.0}
_OFFSET = re.compile(
    r"^(?:向|往)?(东北|东南|西北|西南|东|西|南|北)(?:侧|面|边|方向|方)?(?:约|大约)?"
    r"(\d+(?:\.\d+)?)(米|公里|千米|km|m)",
    re.IGNORECASE,
)


class GazetteerError(ValueError):
    """A gazetteer record is invalid (the message names the field, value and what is allowed)."""


class PlaceKind(StrEnum):
    """What a named place is."""

    ROAD = "road"
    VILLAGE = "village"
    ENTERPRISE = "enterprise"
    MONITORING_POINT = "monitoring_point"
    LANDMARK = "landmark"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Place:
    """A named place with a point in storage lon/lat (EPSG:4326 / CGCS2000)."""

    place_id: str
    name: str
    kind: PlaceKind
    lon: float
    lat: float
    admin_code: str
    aliases: tuple[str, ...] = ()


def parse_offset(text: str) -> tuple[float, float] | None:
    """Parse a leading offset phrase such as ``东200米`` into (east, north) metres.

    Parameters
    ----------
    text
        Normalised text that starts right after a place name.

    Returns
    -------
    tuple of float or None
        (east, north) in metres, or None if `text` does not start with an offset phrase.
    """
    found = _OFFSET.match(text)
    if found is None:
        return None
    east, north = _DIRECTIONS[found.group(1)]
    metres = float(found.group(2)) * _UNIT_METRES[found.group(3).lower()]
    return east * metres, north * metres


def shift_lonlat(lon: float, lat: float, east_m: float, north_m: float) -> tuple[float, float]:
    """Move a WGS84 lon/lat by a small metric offset.

    Parameters
    ----------
    lon, lat
        Degrees.
    east_m, north_m
        Metres; intended for offsets up to a few kilometres.

    Returns
    -------
    tuple of float
        The shifted (lon, lat).
    """
    phi = math.radians(lat)
    w = 1.0 - _E2 * math.sin(phi) ** 2
    meridian = _A * (1.0 - _E2) / w**1.5  # radius of curvature north-south
    prime_vertical = _A / math.sqrt(w)  # radius of curvature east-west
    dlat = math.degrees(north_m / meridian)
    dlon = math.degrees(east_m / (prime_vertical * math.cos(phi)))
    return lon + dlon, lat + dlat


def _float_field(record: Mapping[str, Any], key: str, row: int, low: float, high: float) -> float:
    value = record.get(key)
    try:
        number = float(value)  # type: ignore[arg-type]  # validated just below
    except (TypeError, ValueError):
        raise GazetteerError(
            f"record {row}: field {key!r} must be a number in [{low}, {high}], got {value!r}"
        ) from None
    if not (math.isfinite(number) and low <= number <= high):
        raise GazetteerError(
            f"record {row}: field {key!r} must be a number in [{low}, {high}], got {value!r}"
        )
    return number


def _place_from_record(record: Mapping[str, Any], row: int) -> Place:
    for key in ("name", "kind", "admin_code"):
        if key not in record or record[key] is None or str(record[key]).strip() == "":
            raise GazetteerError(f"record {row}: field {key!r} is missing or empty: {record!r}")
    name = normalise_address(str(record["name"]))
    raw_kind = str(record["kind"]).strip()
    try:
        kind = PlaceKind(raw_kind)
    except ValueError:
        allowed = ", ".join(k.value for k in PlaceKind)
        raise GazetteerError(
            f"record {row} ({name}): field 'kind' is {raw_kind!r}; allowed: {allowed}"
        ) from None
    raw_aliases = record.get("aliases") or ()
    if isinstance(raw_aliases, str):
        raw_aliases = raw_aliases.split("|")
    aliases = tuple(a for a in (normalise_address(str(x)) for x in raw_aliases) if a)
    place_id = record.get("id")
    return Place(
        place_id=str(place_id) if place_id not in (None, "") else str(row),
        name=name,
        kind=kind,
        lon=_float_field(record, "lon", row, -180.0, 180.0),
        lat=_float_field(record, "lat", row, -90.0, 90.0),
        admin_code=str(record["admin_code"]).strip(),
        aliases=aliases,
    )


class Gazetteer:
    """Named places with points, searchable inside the remainder of an address."""

    def __init__(self, places: Iterable[Place]) -> None:
        self._places = tuple(places)
        names: dict[str, list[Place]] = {}
        for place in self._places:
            for surface in dict.fromkeys((place.name, *place.aliases)):
                names.setdefault(surface, []).append(place)
        self._names = names
        by_first: dict[str, list[str]] = {}
        for surface in names:
            by_first.setdefault(surface[0], []).append(surface)
        self._by_first = {ch: tuple(sorted(s, key=len, reverse=True)) for ch, s in by_first.items()}
        self._pattern = _longest_first_pattern(names)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Gazetteer:
        """Build a gazetteer from mappings.

        Parameters
        ----------
        records
            Mappings with keys ``name``, ``kind`` (a `PlaceKind` value), ``lon``, ``lat``
            (storage lon/lat: WGS84/CGCS2000 — convert GCJ-02/BD-09 first), ``admin_code``
            (the unit the place lies in, usually a township) and optionally ``id`` and
            ``aliases`` (list of str, or one str separated by ``|``).

        Returns
        -------
        Gazetteer

        Raises
        ------
        GazetteerError
            On a missing field, an unknown kind, or lon/lat out of range or not a number.
        """
        return cls(_place_from_record(rec, i) for i, rec in enumerate(records))

    @classmethod
    def from_csv(cls, path: str | Path) -> Gazetteer:
        """Build a gazetteer from a UTF-8 CSV with the columns of `from_records`."""
        with Path(path).open(encoding="utf-8-sig", newline="") as handle:
            return cls.from_records(list(csv.DictReader(handle)))

    def __len__(self) -> int:
        return len(self._places)

    def refine(self, result: GeocodeResult, admin: AdminIndex) -> GeocodeResult:
        """Upgrade an admin-level result to a place point when its remainder names a place.

        Parameters
        ----------
        result
            A result of `AdminIndex.resolve`.
        admin
            The index that produced it (used to test "lies within" and to fill codes).

        Returns
        -------
        GeocodeResult
            `result` unchanged when no place matched; otherwise precision ``poi`` with the
            place's point (shifted by a parsed offset), the place's admin codes, and the
            confidence described in the module docstring.
        """
        within = result.code
        text = result.remainder
        pos = 0
        while pos < len(text):
            found = self._pattern.search(text, pos)
            if found is None:
                break
            pos = found.start()
            longest = found.group()
            for surface in self._by_first[longest[0]]:
                if len(surface) > len(longest) or not text.startswith(surface, pos):
                    continue
                places = [
                    p
                    for p in self._names[surface]
                    if within is None or admin.is_within(p.admin_code, within)
                ]
                if len(places) == 1:
                    return self._upgrade(
                        result, admin, places[0], surface, text[pos + len(surface) :]
                    )
                if len(places) > 1:
                    return replace(
                        result,
                        candidates=(
                            *result.candidates,
                            *(Candidate(p.place_id, p.name, "poi") for p in places),
                        ),
                        notes=(
                            *result.notes,
                            f"place {surface!r} is ambiguous: {len(places)} places",
                        ),
                    )
            pos += 1
        return result

    def _upgrade(
        self, result: GeocodeResult, admin: AdminIndex, place: Place, surface: str, tail: str
    ) -> GeocodeResult:
        notes = list(result.notes)
        lon, lat = place.lon, place.lat
        offset = parse_offset(tail)
        if offset is not None:
            lon, lat = shift_lonlat(lon, lat, *offset)
            notes.append(
                f"offset {offset[0]:+.0f} m east, {offset[1]:+.0f} m north of {place.name} applied"
            )
        if result.precision is Precision.NONE:
            confidence = _POI_WITHOUT_ADMIN
        else:
            confidence = round(min(1.0, result.confidence + _POI_BONUS), 3)
        code, level, codes = result.code, result.level, result.codes
        if place.admin_code in admin:
            unit = admin.unit(place.admin_code)
            code, level, codes = unit.code, unit.level, admin.codes_of(unit.code)
        else:
            notes.append(f"admin_code {place.admin_code!r} of {place.name} is not in the index")
        return replace(
            result,
            code=code,
            level=level,
            codes=codes,
            precision=Precision.POI,
            confidence=confidence,
            matched=(*result.matched, surface),
            remainder=tail,
            lon=lon,
            lat=lat,
            notes=tuple(notes),
            place=place.name,
            offset_m=offset,
        )
