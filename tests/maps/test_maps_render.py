"""Unit tests on the rendered HTML: offline assets, escaping, layers, compact payload."""

from __future__ import annotations

import base64
import json
import re

import folium
import geopandas as gpd
import numpy as np
import pytest
import shapely
from folium.plugins import FastMarkerCluster, HeatMap, MarkerCluster

from maps.assets import (
    ASSETS,
    UnknownAssetError,
    asset_root,
    external_urls,
    localize,
    missing_assets,
)
from maps.distribution import render_distribution
from maps.hotspots import render_hotspots
from maps.monitoring import render_monitoring
from maps.nearby import nearby_cases, render_nearby
from maps.payload import pack_uint, script_json
from maps.status import render_status
from maps.style import LanguageError
from tests.maps import synthetic

TAG = re.compile(r"<(script|link)\b[^>]*>")


def has(page: str, text: str) -> bool:
    """``text`` appears literally or as folium's ASCII-escaped JSON (``\\uXXXX``)."""
    return text in page or json.dumps(text)[1:-1] in page


def html_of(m: folium.Map) -> str:
    return m.get_root().render()


def all_maps(leads, townships, status_areas, monitoring_points) -> dict[str, str]:
    return {
        "distribution": html_of(render_distribution(leads, townships, text_fields=("description", "address"))),
        "status": html_of(render_status(status_areas)),
        "hotspots": html_of(render_hotspots(leads, townships)),
        "nearby": html_of(render_nearby(leads, 117.18, 34.26, 1500)),
        "monitoring": html_of(render_monitoring(monitoring_points, townships)),
    }


@pytest.fixture(scope="module")
def pages(leads, townships, status_areas, monitoring_points) -> dict[str, str]:
    return all_maps(leads, townships, status_areas, monitoring_points)


def test_no_external_script_or_link(pages: dict[str, str]) -> None:
    for name, page in pages.items():
        assert external_urls(page) == [], name
        srcs = [t for t in TAG.findall(page)]
        assert srcs, name
        assert "cdn" not in page.lower() or "cdnjs" not in page, name
        for url in re.findall(r'(?:src|href)="([^"]+)"', page):
            if url.startswith(("/static/vendor/", "#")) or url.startswith("geo:"):
                continue
            pytest.fail(f"{name}: unexpected URL {url}")


def test_only_configured_tile_url_is_external(leads, townships) -> None:
    tiles = "https://t0.tianditu.gov.cn/vec_w/wmts?tk=KEY&x={x}&y={y}&z={z}"
    page = html_of(render_distribution(leads.head(50), townships, tiles=tiles, attribution="天地图"))
    assert external_urls(page) == []
    urls = set(re.findall(r"https?://[^\"'\s]+", page))
    assert urls == {tiles.replace("&", "\\u0026")} or urls == {tiles}, urls


def test_every_folium_element_we_use_is_localized() -> None:
    m = folium.Map(tiles=None)
    FastMarkerCluster([[34.2, 117.1]]).add_to(m)
    MarkerCluster().add_to(m)
    HeatMap([[34.2, 117.1, 1.0]]).add_to(m)
    folium.GeoJson({"type": "FeatureCollection", "features": []}).add_to(m)
    folium.LayerControl().add_to(m)
    page = html_of(localize(m, prefix="/v"))
    assert external_urls(page) == []
    assert '<script src="/v/leaflet.heat/dist/leaflet-heat.js">' in page
    assert "jquery" not in page.lower() and "bootstrap" not in page.lower()


def test_unknown_asset_is_refused() -> None:
    m = folium.Map(tiles=None)
    folium.Choropleth(geo_data={"type": "FeatureCollection", "features": []}, data=None).add_to(m)
    m.default_js = [*m.default_js, ("d3", "https://cdnjs.cloudflare.com/d3.js")]
    with pytest.raises(UnknownAssetError, match="'d3'"):
        localize(m)


def test_assets_are_installed_and_mapped() -> None:
    assert missing_assets() == [], "run scripts/assets.sh"
    assert (asset_root() / ASSETS["leaflet"]).read_text(encoding="utf-8").startswith("/*")


def test_xss_text_never_appears_raw(pages: dict[str, str]) -> None:
    for name, page in pages.items():
        assert "<img src=x" not in page, name
        assert "<script>alert(1)" not in page, name
        # exactly one </script> per <script>: nothing closed a script early
        assert page.count("</script>") == len(re.findall(r"<script\b", page)), name


def test_script_json_escapes_html_breakers() -> None:
    s = script_json(["</script>&<!--\u2028"])
    assert s == '["\\u003c/script\\u003e\\u0026\\u003c!--\\u2028"]'
    assert json.loads(s) == ["</script>&<!--\u2028"]


def test_pack_uint_widths_and_bytes() -> None:
    assert pack_uint([1, 2, 255]) == {"w": 1, "b": base64.b64encode(bytes([1, 2, 255])).decode()}
    assert pack_uint([256])["w"] == 2
    assert base64.b64decode(pack_uint([0x010203])["b"]) == bytes([3, 2, 1])
    with pytest.raises(ValueError, match="-1"):
        pack_uint([-1])


def test_distribution_payload_is_compact_and_layers_present(leads, townships) -> None:
    page = html_of(render_distribution(leads, townships))
    # no per-lead marker objects in the HTML: markers are built in the browser
    assert page.count("L.marker(") == 1 and "L.circleMarker(" not in page
    assert len(page) / len(leads) < 40  # bytes per lead, boundaries included
    for body in synthetic.BODIES:
        assert has(page, f"责任主体: {body}")
    assert has(page, "类别: 大气") and has(page, "乡镇线索数") and has(page, "处置状态")
    en = html_of(render_distribution(leads.head(100), townships, lang="en"))
    assert has(en, "Disposal status") and has(en, "Body: ")


def test_township_counts_from_township_code(leads, townships) -> None:
    page = html_of(render_distribution(leads, townships))
    counts = leads["township_code"].value_counts()
    top = counts.index[0]
    name = townships.set_index("code").loc[top, "name"]
    tip = f"<b>{name}</b><br>线索数: {counts.iloc[0]}"
    assert has(page, tip) or has(page.replace("\\u003c", "<").replace("\\u003e", ">"), tip)


def test_bad_inputs_name_the_problem(leads, townships) -> None:
    with pytest.raises(ValueError, match="lacks columns \\['body'\\]"):
        render_distribution(leads.drop(columns="body"), townships)
    with pytest.raises(LanguageError, match="lang='fr'"):
        render_distribution(leads, townships, lang="fr")
    with pytest.raises(ValueError, match="attribution"):
        render_distribution(leads, townships, tiles="https://x/{z}/{x}/{y}.png")


def test_hotspot_notice_when_too_few(townships) -> None:
    few = gpd.GeoDataFrame(geometry=shapely.points([117.1, 117.2], [34.2, 34.3]), crs=4326)
    page = html_of(render_hotspots(few, townships))
    assert has(page, "要素过少") and has(page, "至少需要 30 个")


def test_nearby_sorted_by_distance_with_escaped_geo_link() -> None:
    pts = gpd.GeoDataFrame(
        {"code": ["B", "A", "C&<x>"], "category": "扬尘", "status": "signed", "deadline": [None, None, None]},
        geometry=shapely.points([117.0, 117.0, 117.0], [34.009, 34.001, 34.003]),
        crs=4326,
    )
    near = nearby_cases(pts, 117.0, 34.0, 500.0)
    # 0.001° of latitude is about 111 m: A (111 m) then C (333 m); B (1 km) is outside
    assert list(near["code"]) == ["A", "C&<x>"]
    assert near["distance_m"].iloc[0] == pytest.approx(110.9, abs=1.0)
    page = html_of(render_nearby(pts, 117.0, 34.0, 500.0))
    assert "geo:34.003000,117.000000?q=34.003000,117.000000(C%26%3Cx%3E)" in page
    assert "C&<x>" not in page


def test_status_marks_worst_areas(status_areas) -> None:
    page = html_of(render_status(status_areas, lang="en"))
    assert has(page, "On-time closure rate") and has(page, "Thick outline")
    assert np.isfinite(status_areas["open"]).all()


def test_codes_split_into_prefix_and_number() -> None:
    import pandas as pd

    from maps.distribution import _split_codes

    codes = ["XZ2024000123", "ab", "X-7", None, "中文05", "L20261101-9F3A07C2", "L20261101-00000A0B", "Q-FFFFFFFF"]
    idx, table, number = _split_codes(pd.Series(codes))
    # Up to 8 trailing upper-case hex characters become the number; the JS side writes it back
    # in hex padded to that width.
    assert [table[i] for i in idx] == [["XZ20", 8], ["ab", 0], ["X-", 1], ["", 0], ["中文", 2],
                                       ["L20261101-", 8], ["L20261101-", 8], ["Q-", 8]]
    assert list(number) == [0x24000123, 0, 7, 0, 5, 0x9F3A07C2, 0xA0B, 0xFFFFFFFF]
    rebuilt = [table[i][0] + (format(v, "X").zfill(table[i][1]) if table[i][1] else "")
               for i, v in zip(idx, number, strict=True)]
    assert rebuilt == [c or "" for c in codes]


# branca compiles each element's rendered output as a Jinja template again, so user text that
# reached it raw would run on the server ({{ … }}) or break the page ({# …): evaluated, the first
# gives "SSTI-X", the second drops "hidden-SSTI", the third raises TemplateSyntaxError.
TEMPLATE_TEXTS = ("{{ 'SST' ~ 'I-X' }}", "{% if 0 %}hidden-SSTI{% endif %}", "{# SSTI-Z")


def test_user_text_is_never_run_as_a_template(leads, townships, status_areas, monitoring_points) -> None:
    from tests.api.mapseed import map_leads

    t = TEMPLATE_TEXTS
    few = leads.head(60).copy()
    few["description"], few["address"], few["category"] = t[0], t[1], t[2]
    few["body"] = [t[i % 3] for i in range(len(few))]
    few["code"] = [f"{t[i % 3]}-{i}" for i in range(len(few))]
    towns = townships.assign(name=[t[i % 3] for i in range(len(townships))])
    areas = status_areas.assign(name=[t[i % 3] for i in range(len(status_areas))], worst_body=t[1])
    points = monitoring_points.assign(name=t[2], latest=t[0])
    pages = all_maps(few, towns, areas, points)
    for name, page in pages.items():
        assert "SSTI-X" not in page, name
        assert "{{" not in page and "{%" not in page and "{#" not in page, name
    for name in ("distribution", "status", "hotspots"):
        assert "hidden-SSTI" in pages[name] and "SSTI-Z" in pages[name], name
    # the browser still gets the very text: the payload decodes to it
    decoded = map_leads(pages["distribution"])
    assert {x["texts"][0] for x in decoded} == {t[0]} and {x["texts"][1] for x in decoded} == {t[1]}
    assert {x["code"] for x in decoded} == set(few["code"])


def test_script_json_never_opens_a_template_tag() -> None:
    value = {"a": "{{x}} {%y%} {#z#} {{{", "b": [{"c": {}}], "d": "{"}
    s = script_json(value)
    assert "{{" not in s and "{%" not in s and "{#" not in s
    assert json.loads(s) == value


def test_dictionary_encode_of_categoricals_matches_plain_text() -> None:
    import pandas as pd

    from maps.payload import dictionary_encode
    from maps.style import STATUSES

    rng = np.random.default_rng(3)
    values = rng.choice(np.array(["b", "a", None, "c", "", "中"], dtype=object), 500)
    cat = pd.Series(pd.Categorical(values, categories=["c", "b", "a", "中", "", "unused"]))
    codes, words = dictionary_encode(cat)
    plain_codes, plain_words = dictionary_encode(pd.Series(values, dtype=object))
    assert words == plain_words == ["", "a", "b", "c", "中"]  # sorted, missing as '', unused left out
    assert (codes == plain_codes).all()
    st = rng.choice(np.array(["closed", "merged", None, "signed"], dtype=object), 200)
    codes, words = dictionary_encode(pd.Series(pd.Categorical(st)), order=STATUSES)
    plain_codes, _ = dictionary_encode(pd.Series(st, dtype=object), order=STATUSES)
    assert words == list(STATUSES) and (codes == plain_codes).all()
    assert words[codes[list(st).index("merged")]] == "other"


def test_lon_lat_columns_render_like_point_geometry(leads, townships) -> None:
    from tests.api.mapseed import map_leads

    plain = leads.drop(columns="geometry").assign(lon=leads.geometry.x, lat=leads.geometry.y)
    plain = plain.assign(status=plain["status"].astype("category"), body=plain["body"].astype("category"))
    assert map_leads(html_of(render_distribution(plain, townships))) == map_leads(
        html_of(render_distribution(leads, townships)))
    with pytest.raises(ValueError, match=r"leads.lon/lat at row 1 is \(nan, 34.0\)"):
        render_distribution(plain.head(2).assign(lon=[117.0, np.nan], lat=34.0), townships)
    hot = html_of(render_hotspots(plain[["lon", "lat"]], townships))
    assert has(hot, "热点分析")
