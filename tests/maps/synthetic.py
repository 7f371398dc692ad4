"""Synthetic, realistic-looking leads and square townships around Xuzhou (for tests and bench)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "</script><script>alert(1)</script>"

BODIES = ["市生态环境局", "市住建局", "市城管局", "市水务局", "市交通运输局", "市农业农村局"]
GROUPS = ["air", "water", "noise", "solid_waste", "soil", "ecology"]
CATEGORIES = {
    "air": ["扬尘", "餐饮油烟", "露天焚烧"],
    "water": ["黑臭水体", "污水直排"],
    "noise": ["施工噪声", "社会生活噪声"],
    "solid_waste": ["建筑垃圾", "生活垃圾"],
    "soil": ["土壤污染"],
    "ecology": ["破坏植被"],
}
STATUS_P = {
    "received": 0.05,
    "dispatched": 0.08,
    "signed": 0.07,
    "in_progress": 0.2,
    "rectified": 0.1,
    "verified": 0.1,
    "closed": 0.35,
    "returned": 0.05,
}
# City centre and two county seats: leads concentrate where people live.
CENTRES = [(117.18, 34.26, 0.05, 0.55), (116.93, 34.73, 0.04, 0.15), (118.0, 34.37, 0.05, 0.15)]


def townships(nx: int = 8, ny: int = 5) -> gpd.GeoDataFrame:
    """An nx x ny tiling of Xuzhou's box (lon 116.4-118.6, lat 33.7-34.9), clearly synthetic."""
    xs, ys = np.linspace(116.4, 118.6, nx + 1), np.linspace(33.7, 34.9, ny + 1)
    j, i = np.meshgrid(np.arange(nx), np.arange(ny))
    j, i = j.ravel(), i.ravel()
    geom = shapely.box(xs[j], ys[i], xs[j + 1], ys[i + 1])
    codes = [f"3203{k:05d}" for k in range(nx * ny)]
    names = [f"合成乡镇{k + 1}" for k in range(nx * ny)]
    names[0] = XSS_IMG  # user-editable names must be escaped too
    return gpd.GeoDataFrame({"code": codes, "name": names}, geometry=geom, crs=4326)


def leads(n: int, seed: int = 5, towns: gpd.GeoDataFrame | None = None) -> gpd.GeoDataFrame:
    """``n`` leads: 85 % around three centres, 15 % uniform; two of them carry XSS text."""
    rng = np.random.default_rng(seed)
    k = rng.choice(len(CENTRES) + 1, size=n, p=[0.55, 0.15, 0.15, 0.15])
    lon, lat = rng.uniform(116.4, 118.6, n), rng.uniform(33.7, 34.9, n)
    for c, (x, y, s, _) in enumerate(CENTRES):
        sel = k == c
        lon[sel] = np.clip(rng.normal(x, s, sel.sum()), 116.4, 118.6)
        lat[sel] = np.clip(rng.normal(y, s * 0.8, sel.sum()), 33.7, 34.9)
    group = rng.choice(GROUPS, size=n, p=[0.4, 0.2, 0.2, 0.12, 0.04, 0.04])
    category = np.array([CATEGORIES[g][rng.integers(len(CATEGORIES[g]))] for g in group])
    status = rng.choice(list(STATUS_P), size=n, p=list(STATUS_P.values()))
    deadline = pd.Timestamp("2024-06-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 60 * 24 * 60, n), unit="min")
    df = pd.DataFrame(
        {
            "code": [f"XZ2024{i:07d}" for i in range(n)],
            "category": category,
            "category_group": group,
            "status": status,
            "deadline": deadline,
            "body": rng.choice(BODIES, size=n),
            "channel": rng.choice(["12345", "12369", "数字城管", "微信"], size=n),
            "description": rng.choice(["工地夜间施工扬尘严重", "河道发黑发臭", "饭店油烟直排"], size=n),
            "address": rng.choice(["鼓楼区中山北路", "云龙区和平路", "泉山区湖滨路"], size=n),
        }
    )
    df.loc[df.index[:1], "description"] = XSS_IMG
    if n > 1:
        df.loc[df.index[1:2], "description"] = XSS_SCRIPT
        df.loc[df.index[1:2], "address"] = XSS_IMG
        df.loc[df.index[2:3], "deadline"] = pd.NaT
    gdf = gpd.GeoDataFrame(df, geometry=shapely.points(lon, lat), crs=4326)
    if towns is not None:
        j = gpd.sjoin(gdf[["geometry"]], towns[["code", "geometry"]], predicate="intersects")
        j = j[~j.index.duplicated()]
        gdf["township_code"] = j["code"].reindex(gdf.index)
    return gdf
