"""Online geocoders (Tianditu, Amap, Baidu) behind one small protocol.

Each provider is handed an `httpx.Client` and an API key by the caller: settings, retries,
proxies and timeouts belong to whoever builds the client, and tests pass an
`httpx.MockTransport` so nothing here ever needs the network.

Every provider converts its own datum to storage lon/lat with `geo.crs.to_storage`:
Tianditu answers in CGCS2000 (treated as WGS84), Amap in GCJ-02, Baidu in BD-09 (we ask for
its default ``bd09ll`` and convert here, so there is one conversion path to test).

Failures (transport errors, HTTP errors, quota or key errors reported in the body, malformed
JSON) raise `ProviderError` naming the provider and the status; an answer with no result
returns None.

Confidence per provider
-----------------------
* Tianditu: ``score / 100``.
* Amap: no score is returned, so a fixed value per match level (`AMAP_LEVEL_CONFIDENCE`).
* Baidu: ``comprehension / 100`` when present, else ``confidence / 100``; times 0.8 when
  ``precise`` is 0 (Baidu placed the point by fuzzy matching).
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx

from geo.crs import Datum, to_storage
from geo.geocoding.result import AddressError, AdminLevel, GeocodeResult, Precision, empty_codes

__all__ = [
    "AMAP_LEVEL_CONFIDENCE",
    "AmapGeocoder",
    "BaiduGeocoder",
    "Geocoder",
    "ProviderError",
    "TiandituGeocoder",
]


class ProviderError(RuntimeError):
    """An online geocoder failed (not "no result": that is None).

    Attributes
    ----------
    provider
        ``'tianditu'``, ``'amap'`` or ``'baidu'``.
    status
        The HTTP status, the provider's own status/info code, ``'transport'`` or
        ``'malformed'``.
    """

    def __init__(self, provider: str, status: str | int, detail: str) -> None:
        super().__init__(f"{provider} geocoding failed (status {status}): {detail}")
        self.provider = provider
        self.status = status
        self.detail = detail


@runtime_checkable
class Geocoder(Protocol):
    """Anything that turns an address into a `GeocodeResult` (or None when it finds nothing)."""

    name: str

    def geocode(self, address: str, *, city: str | None = None) -> GeocodeResult | None:
        """Geocode `address`, optionally restricted to `city`."""
        ...


# Provider level labels → precision. Labels not listed count as a point (POI).
_LEVEL_PRECISION: dict[str, Precision] = {
    "省": Precision.PROVINCE,
    "市": Precision.CITY,
    "城市": Precision.CITY,
    "区县": Precision.COUNTY,
    "乡镇": Precision.TOWNSHIP,
    "开发区": Precision.TOWNSHIP,
}
# A country-level hit says nothing about where in China the address is.
_USELESS_LEVELS = frozenset({"国家"})

#: Amap returns no score; confidence is taken from its match level.
AMAP_LEVEL_CONFIDENCE: dict[str, float] = {
    "门牌号": 0.9,
    "单元号": 0.9,
    "楼号": 0.9,
    "兴趣点": 0.85,
    "道路交叉路口": 0.8,
    "道路": 0.7,
    "村庄": 0.7,
    "热点商圈": 0.7,
    "公交站台、地铁站": 0.7,
    "开发区": 0.6,
    "乡镇": 0.6,
    "区县": 0.5,
    "市": 0.3,
    "省": 0.2,
}
_AMAP_DEFAULT_CONFIDENCE = 0.3
_BAIDU_FUZZY_FACTOR = 0.8


def _precision_of(label: str) -> Precision:
    return _LEVEL_PRECISION.get(label, Precision.POI)


def _codes_from_adcode(adcode: str) -> tuple[str | None, AdminLevel | None, dict[str, str | None]]:
    """Codes per level from a 6-digit GB/T 2260 adcode, by its prefix structure.

    Caveat: for county-level units directly under a province (e.g. 429004 仙桃市) the derived
    city code (429000) is not a real unit.
    """
    codes = empty_codes()
    if len(adcode) != 6 or not adcode.isdigit():
        return None, None, codes
    codes["province"] = adcode[:2] + "0000"
    if adcode.endswith("0000"):
        return adcode, AdminLevel.PROVINCE, codes
    codes["city"] = adcode[:4] + "00"
    if adcode.endswith("00"):
        return adcode, AdminLevel.CITY, codes
    codes["county"] = adcode
    return adcode, AdminLevel.COUNTY, codes


def _float(value: Any, provider: str, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ProviderError(provider, "malformed", f"{field} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ProviderError(provider, "malformed", f"{field} is not finite: {value!r}")
    return number


class _HttpGeocoder:
    """Shared plumbing: key check, one GET, error mapping, datum conversion."""

    name: ClassVar[str]
    datum: ClassVar[Datum]
    default_url: ClassVar[str]

    def __init__(self, client: httpx.Client, key: str, *, url: str | None = None) -> None:
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{self.name}: key must be a non-empty str, got {key!r}")
        self._client = client
        self._key = key
        self._url = url or self.default_url

    def _check_address(self, address: str) -> str:
        if not isinstance(address, str) or not address.strip():
            raise AddressError(f"address must be a non-empty str, got {address!r}")
        return address.strip()

    def _get_json(self, params: dict[str, str]) -> dict[str, Any]:
        try:
            response = self._client.get(self._url, params=params)
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, "transport", f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != httpx.codes.OK:
            raise ProviderError(self.name, response.status_code, response.text[:200])
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderError(
                self.name, "malformed", f"response is not JSON: {response.text[:200]!r}"
            ) from exc
        if not isinstance(body, dict):
            raise ProviderError(self.name, "malformed", f"response is not an object: {body!r}")
        return body

    def _result(
        self,
        address: str,
        lon: float,
        lat: float,
        label: str,
        confidence: float,
        adcode: str | None = None,
    ) -> GeocodeResult:
        slon, slat = to_storage(lon, lat, self.datum)
        code, level, codes = _codes_from_adcode(adcode or "")
        return GeocodeResult(
            address=address,
            code=code,
            level=level,
            codes=codes,
            precision=_precision_of(label),
            confidence=round(min(1.0, max(0.0, confidence)), 3),
            lon=float(slon),
            lat=float(slat),
            source=self.name,
            raw_level=label,
        )


class TiandituGeocoder(_HttpGeocoder):
    """Tianditu (天地图) geocoder; CGCS2000 coordinates, stored as they are.

    Parameters
    ----------
    client
        The HTTP client to use (timeouts and retries are the caller's).
    key
        The ``tk`` key.
    url
        Override of the endpoint (default ``http://api.tianditu.gov.cn/geocoder``).
    """

    name = "tianditu"
    datum = Datum.cgcs2000
    default_url = "http://api.tianditu.gov.cn/geocoder"
    # Status values Tianditu uses for "nothing found" rather than for a failure.
    _NO_RESULT_STATUS = frozenset({"101", "404"})

    def geocode(self, address: str, *, city: str | None = None) -> GeocodeResult | None:
        """Geocode `address`; Tianditu has no city filter, so `city` is prefixed if absent."""
        keyword = self._check_address(address)
        if city and city not in keyword:
            keyword = city + keyword
        body = self._get_json(
            {"ds": json.dumps({"keyWord": keyword}, ensure_ascii=False), "tk": self._key}
        )
        status = str(body.get("status", ""))
        if status != "0":
            msg = str(body.get("msg", ""))
            if status in self._NO_RESULT_STATUS or "无结果" in msg:
                return None
            raise ProviderError(self.name, status or "missing", msg or repr(body)[:200])
        location = body.get("location")
        if not isinstance(location, dict) or "lon" not in location:
            return None
        lon = _float(location.get("lon"), self.name, "location.lon")
        lat = _float(location.get("lat"), self.name, "location.lat")
        score = location.get("score")
        confidence = _float(score, self.name, "location.score") / 100 if score is not None else 0.5
        label = str(location.get("level", ""))
        if label in _USELESS_LEVELS:
            return None
        return self._result(address, lon, lat, label, confidence)


class AmapGeocoder(_HttpGeocoder):
    """Amap (高德) geocoder; GCJ-02 coordinates converted to storage lon/lat.

    Parameters
    ----------
    client
        The HTTP client to use.
    key
        The web-service ``key``.
    url
        Override of the endpoint (default ``https://restapi.amap.com/v3/geocode/geo``).
    """

    name = "amap"
    datum = Datum.gcj02
    default_url = "https://restapi.amap.com/v3/geocode/geo"

    def geocode(self, address: str, *, city: str | None = None) -> GeocodeResult | None:
        """Geocode `address`, filtered by `city` (name, citycode or adcode) when given."""
        address = self._check_address(address)
        params = {"address": address, "key": self._key, "output": "JSON"}
        if city:
            params["city"] = city
        body = self._get_json(params)
        if str(body.get("status")) != "1":
            raise ProviderError(
                self.name, str(body.get("infocode", "missing")), str(body.get("info", body))
            )
        geocodes = body.get("geocodes") or []
        if not isinstance(geocodes, list):
            raise ProviderError(self.name, "malformed", f"geocodes is not a list: {geocodes!r}")
        if not geocodes:
            return None
        first = geocodes[0]
        location = first.get("location") if isinstance(first, dict) else None
        if not isinstance(location, str) or location.count(",") != 1:
            raise ProviderError(self.name, "malformed", f"location is not 'lon,lat': {location!r}")
        lon_text, lat_text = location.split(",")
        lon = _float(lon_text, self.name, "location lon")
        lat = _float(lat_text, self.name, "location lat")
        label = str(first.get("level", ""))
        if label in _USELESS_LEVELS:
            return None
        adcode = first.get("adcode")
        return self._result(
            address,
            lon,
            lat,
            label,
            AMAP_LEVEL_CONFIDENCE.get(label, _AMAP_DEFAULT_CONFIDENCE),
            adcode if isinstance(adcode, str) else None,
        )


class BaiduGeocoder(_HttpGeocoder):
    """Baidu (百度) geocoder v3; BD-09 coordinates converted to storage lon/lat.

    Parameters
    ----------
    client
        The HTTP client to use.
    key
        The ``ak`` key.
    url
        Override of the endpoint (default ``https://api.map.baidu.com/geocoding/v3/``).
    """

    name = "baidu"
    datum = Datum.bd09
    default_url = "https://api.map.baidu.com/geocoding/v3/"

    def geocode(self, address: str, *, city: str | None = None) -> GeocodeResult | None:
        """Geocode `address`, filtered by `city` when given."""
        address = self._check_address(address)
        params = {"address": address, "output": "json", "ak": self._key}
        if city:
            params["city"] = city
        body = self._get_json(params)
        status = body.get("status")
        if str(status) != "0":
            msg = str(body.get("msg", body.get("message", "")))
            # Baidu reports "no match" as status 1 with this message, not as an empty result.
            if "无相关结果" in msg:
                return None
            raise ProviderError(self.name, str(status), msg or repr(body)[:200])
        result = body.get("result")
        if not isinstance(result, dict) or not result:
            return None
        location = result.get("location")
        if not isinstance(location, dict):
            raise ProviderError(self.name, "malformed", f"result.location missing: {result!r}")
        lon = _float(location.get("lng"), self.name, "result.location.lng")
        lat = _float(location.get("lat"), self.name, "result.location.lat")
        label = str(result.get("level", ""))
        if label in _USELESS_LEVELS:
            return None
        score = result.get("comprehension", result.get("confidence"))
        confidence = (
            _float(score, self.name, "result.confidence") / 100 if score is not None else 0.5
        )
        if result.get("precise") in (0, "0"):
            confidence *= _BAIDU_FUZZY_FACTOR
        return self._result(address, lon, lat, label, confidence)
