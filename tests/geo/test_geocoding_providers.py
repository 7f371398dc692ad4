"""Online geocoders against httpx.MockTransport: request shape, datum, errors, no-result."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from geo.crs import to_storage
from geo.geocoding import AddressError, Precision
from geo.geocoding.providers import (
    AmapGeocoder,
    BaiduGeocoder,
    Geocoder,
    ProviderError,
    TiandituGeocoder,
)

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def answer(body: Any, seen: list[httpx.Request] | None = None, status: int = 200) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    return handle


# -- Tianditu ---------------------------------------------------------------------------------


def test_tianditu_request_and_cgcs2000_passthrough() -> None:
    seen: list[httpx.Request] = []
    body = {
        "status": "0",
        "msg": "ok",
        "location": {"lon": "117.18", "lat": "34.26", "level": "门址", "score": 95},
    }
    geocoder = TiandituGeocoder(client(answer(body, seen)), "TK123")
    r = geocoder.geocode("铜山区柳新镇", city="徐州市")
    assert r is not None
    request = seen[0]
    assert request.url.host == "api.tianditu.gov.cn"
    assert request.url.params["tk"] == "TK123"
    assert json.loads(request.url.params["ds"]) == {"keyWord": "徐州市铜山区柳新镇"}
    # CGCS2000 is stored as is.
    assert (r.lon, r.lat) == (117.18, 34.26)
    assert r.precision is Precision.POI
    assert r.confidence == pytest.approx(0.95)
    assert r.source == "tianditu"
    assert r.raw_level == "门址"


def test_tianditu_county_level_and_no_result() -> None:
    body = {"status": "0", "location": {"lon": 117.9, "lat": 34.3, "level": "区县", "score": 60}}
    r = TiandituGeocoder(client(answer(body)), "k").geocode("邳州市")
    assert r is not None and r.precision is Precision.COUNTY
    empty = TiandituGeocoder(client(answer({"status": "101", "msg": "无结果"})), "k")
    assert empty.geocode("火星某地") is None


def test_tianditu_error_status_raises() -> None:
    geocoder = TiandituGeocoder(client(answer({"status": "1", "msg": "权限校验失败"})), "k")
    with pytest.raises(ProviderError, match=r"tianditu.*status 1.*权限校验失败") as info:
        geocoder.geocode("徐州")
    assert info.value.provider == "tianditu"
    assert info.value.status == "1"


# -- Amap -------------------------------------------------------------------------------------


def test_amap_request_gcj02_conversion_and_adcode() -> None:
    seen: list[httpx.Request] = []
    body = {
        "status": "1",
        "info": "OK",
        "infocode": "10000",
        "count": "1",
        "geocodes": [{"location": "117.191,34.262", "level": "乡镇", "adcode": "320312"}],
    }
    r = AmapGeocoder(client(answer(body, seen)), "AK").geocode("铜山区柳新镇", city="徐州")
    assert r is not None
    params = seen[0].url.params
    assert seen[0].url.host == "restapi.amap.com"
    assert (params["address"], params["key"], params["city"]) == ("铜山区柳新镇", "AK", "徐州")
    expected = to_storage(117.191, 34.262, "gcj02")
    assert (r.lon, r.lat) == pytest.approx(expected, abs=1e-12)
    # Independent sanity check: in Xuzhou GCJ-02 is ~500 m east and ~150 m south of WGS84,
    # so the stored point must lie west (0.004-0.007 deg) and north of the GCJ-02 input.
    assert r.lon is not None and r.lat is not None
    assert 0.004 < 117.191 - r.lon < 0.007
    assert 0.0008 < r.lat - 34.262 < 0.0018
    assert r.precision is Precision.TOWNSHIP
    assert r.confidence == pytest.approx(0.6)
    assert r.codes == {
        "province": "320000",
        "city": "320300",
        "county": "320312",
        "township": None,
    }
    assert r.code == "320312"


def test_amap_no_result_and_quota() -> None:
    empty = {"status": "1", "info": "OK", "infocode": "10000", "count": "0", "geocodes": []}
    assert AmapGeocoder(client(answer(empty)), "k").geocode("某某") is None
    quota = {"status": "0", "info": "DAILY_QUERY_OVER_LIMIT", "infocode": "10003"}
    with pytest.raises(ProviderError, match=r"amap.*10003.*DAILY_QUERY_OVER_LIMIT") as info:
        AmapGeocoder(client(answer(quota)), "k").geocode("徐州")
    assert info.value.status == "10003"


def test_amap_malformed_location() -> None:
    body = {"status": "1", "geocodes": [{"location": "117.1;34.2", "level": "道路"}]}
    with pytest.raises(ProviderError, match="malformed"):
        AmapGeocoder(client(answer(body)), "k").geocode("徐州")


# -- Baidu ------------------------------------------------------------------------------------


def test_baidu_request_bd09_conversion() -> None:
    seen: list[httpx.Request] = []
    body = {
        "status": 0,
        "result": {
            "location": {"lng": 117.2, "lat": 34.3},
            "precise": 1,
            "confidence": 50,
            "comprehension": 80,
            "level": "道路",
        },
    }
    r = BaiduGeocoder(client(answer(body, seen)), "AK").geocode("徐州市和平路", city="徐州市")
    assert r is not None
    params = seen[0].url.params
    assert (params["address"], params["ak"], params["output"]) == ("徐州市和平路", "AK", "json")
    assert params["city"] == "徐州市"
    assert (r.lon, r.lat) == pytest.approx(to_storage(117.2, 34.3, "bd09"), abs=1e-12)
    # BD-09 is GCJ-02 plus a further ~0.0065 deg east / 0.006 deg north shift, so in Xuzhou the
    # stored WGS84 point is roughly 0.011 deg west and 0.0048 deg south of the input.
    assert r.lon is not None and r.lat is not None
    assert 0.009 < 117.2 - r.lon < 0.014
    assert 0.003 < 34.3 - r.lat < 0.007
    assert r.confidence == pytest.approx(0.8)
    assert r.precision is Precision.POI


def test_baidu_fuzzy_point_and_no_result_and_quota() -> None:
    fuzzy = {
        "status": 0,
        "result": {
            "location": {"lng": 117.2, "lat": 34.3},
            "precise": 0,
            "confidence": 50,
            "level": "区县",
        },
    }
    r = BaiduGeocoder(client(answer(fuzzy)), "k").geocode("睢宁县")
    assert r is not None
    assert r.confidence == pytest.approx(0.4)  # 50 / 100 * 0.8
    assert r.precision is Precision.COUNTY
    nothing = {"status": 1, "msg": "Internal Service Error:无相关结果", "results": []}
    assert BaiduGeocoder(client(answer(nothing)), "k").geocode("某某") is None
    quota = {"status": 302, "message": "天配额超限，限制访问"}
    with pytest.raises(ProviderError, match=r"baidu.*302") as info:
        BaiduGeocoder(client(answer(quota)), "k").geocode("徐州")
    assert info.value.status == "302"


# -- shared failure modes -------------------------------------------------------------------

PROVIDERS = [TiandituGeocoder, AmapGeocoder, BaiduGeocoder]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_http_error_status(provider: type[TiandituGeocoder]) -> None:
    with pytest.raises(ProviderError, match="status 503") as info:
        provider(client(answer("busy", status=503)), "k").geocode("徐州")
    assert info.value.status == 503
    assert info.value.provider == provider.name


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_json(provider: type[TiandituGeocoder]) -> None:
    with pytest.raises(ProviderError, match="malformed"):
        provider(client(answer("<html>oops</html>")), "k").geocode("徐州")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_transport_error(provider: type[TiandituGeocoder]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ProviderError, match="transport"):
        provider(client(refuse), "k").geocode("徐州")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_protocol_key_and_address_checks(provider: type[TiandituGeocoder]) -> None:
    geocoder = provider(client(answer({})), "k")
    assert isinstance(geocoder, Geocoder)
    with pytest.raises(ValueError, match="key"):
        provider(client(answer({})), "  ")
    with pytest.raises(AddressError):
        geocoder.geocode("   ")
