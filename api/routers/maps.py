"""Map pages (HTML) drawn from the database, in the caller's scope.

Maps are opened in a browser tab, where an ``Authorization`` header cannot be set, so the bearer
token is also accepted as ``?token=``. A token in a URL is written to server access logs and
browser history: tokens expire (``LEADGRID_TOKEN_TTL_MINUTES``), the pages are sent with
``Referrer-Policy: no-referrer`` so the URL never reaches a tile server, and ``Cache-Control:
no-store`` so they are not kept on shared machines. Prefer the header wherever you can set it.

Every page carries a strict Content-Security-Policy: scripts only from this server plus the page's
own inline scripts, which carry a fresh nonce (folium writes the map as inline script); an
injected ``<script>`` or ``onerror=`` handler would have no nonce and is refused by the browser
even if escaping ever failed. Styles need ``'unsafe-inline'``: folium emits ``<style>`` blocks and
Leaflet, the legends and the marker icons use ``style`` attributes; a nonce cannot cover
attributes, and CSS cannot run script.
"""

from __future__ import annotations

import gzip
import re
import secrets
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from api.deps import SessionDep, SettingsDep, bearer, principal_of_token
from geo import crs as gcrs
from geo.hotspots import HotspotInputError
from layers import mapdata
from layers.errors import Invalid, Unauthorized
from layers.leads import OPEN_STATES, LeadFilter
from layers.settings import Settings
from layers.users import Principal
from maps.canvas import MapInputError
from maps.distribution import render_distribution
from maps.hotspots import render_hotspots
from maps.monitoring import render_monitoring
from maps.nearby import render_nearby
from maps.status import render_status

router = APIRouter(prefix="/maps", tags=["maps"])

Lang = Annotated[str | None, Query(pattern="^(zh|en)$", description="zh (default from settings) or en")]
_TOKEN_DOC = ("bearer token, when the Authorization header cannot be sent (a browser tab); "
              "it appears in server logs and browser history, and expires")


async def map_principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    token: Annotated[str | None, Query(max_length=2000, description=_TOKEN_DOC)] = None,
) -> Principal:
    """The caller from the Authorization header or, failing that, ``?token=``."""
    raw = creds.credentials if creds is not None and creds.scheme.lower() == "bearer" else token
    if not raw:
        raise Unauthorized("missing bearer token: send Authorization: Bearer … or ?token=…")
    return await principal_of_token(request, raw)


MapPrincipal = Annotated[Principal, Depends(map_principal)]


async def lead_filter(
    status: Annotated[list[str], Query(max_length=20)] = [],  # noqa: B006 - FastAPI reads the default
    body: Annotated[list[str], Query(max_length=20)] = [],  # noqa: B006
    category: Annotated[list[str], Query(max_length=40)] = [],  # noqa: B006
    channel: Annotated[list[str], Query(max_length=20)] = [],  # noqa: B006
    jurisdiction: Annotated[str | None, Query(max_length=20)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> LeadFilter:
    """The filters of ``GET /leads``; naive times are Asia/Shanghai."""
    return LeadFilter(status=status, body=body, category=category, channel=channel,
                      jurisdiction=jurisdiction, since=_aware(since), until=_aware(until))


Filters = Annotated[LeadFilter, Depends(lead_filter)]


def _aware(dt: datetime | None) -> datetime | None:
    return dt if dt is None or dt.tzinfo is not None else dt.replace(tzinfo=ZoneInfo("Asia/Shanghai"))


_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)([^>]*)>")


def _tile_source(tiles: str | None) -> str:
    """The CSP source of the tile server (``{s}`` subdomains become ``*.``)."""
    if not tiles or tiles.startswith("/"):
        return ""
    parts = urlsplit(tiles)
    host = parts.netloc
    if "{" in host:
        host = "*." + host.split(".", 1)[1] if "." in host else host
    return f" {parts.scheme}://{host}"


class Rendered(Protocol):
    """A folium map as the renderers return it (only ``maps`` imports folium)."""

    def get_root(self) -> Any: ...


#: Pages above this many bytes are sent gzip-compressed to clients that accept it.
GZIP_MIN_BYTES = 1000
_GZIP_LEVEL = 1  # base64 columns barely compress: level 4 saved 3 % of 2.5 MB for 60 % more CPU


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (``gzip`` or ``*`` with q > 0)."""
    for part in accept_encoding.lower().split(","):
        coding, *params = (x.strip() for x in part.split(";"))
        if coding in ("gzip", "*"):
            q = next((x[2:] for x in params if x.startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def page(m: Rendered, settings: Settings, accept_encoding: str = "") -> Response:
    """The map as an HTML response with a nonce-based Content-Security-Policy.

    Gzip-compressed when ``accept_encoding`` (the request's ``Accept-Encoding``) allows it: a map
    of 100,000 leads is about 2.5 MB of HTML.
    """
    nonce = secrets.token_urlsafe(18)
    # Every user text on the page is escaped (no raw '<' survives), so each <script> tag here
    # is one folium or we wrote; only those get the nonce.
    html = _INLINE_SCRIPT.sub(lambda mt: f'<script nonce="{nonce}"{mt.group(1)}>', m.get_root().render())
    csp = (f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
           f"img-src 'self' data:{_tile_source(settings.tiles)}; font-src 'self'; connect-src 'self'; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; object-src 'none'")
    headers = {"Content-Security-Policy": csp, "Referrer-Policy": "no-referrer",
               "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
    body = html.encode("utf-8")
    if len(body) >= GZIP_MIN_BYTES and _accepts_gzip(accept_encoding):
        body = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


def _encoding(request: Request) -> str:
    return request.headers.get("accept-encoding", "")


def _look(settings: Settings, lang: str | None) -> dict[str, Any]:
    tiles = settings.tiles
    return {"lang": lang or settings.lang, "tiles": tiles,
            "attribution": settings.tiles_attribution if tiles else None}


@router.get("/distribution", response_class=HTMLResponse)
def distribution(request: Request, session: SessionDep, settings: SettingsDep, p: MapPrincipal, f: Filters,
                 lang: Lang = None) -> Response:
    """Leads clustered and coloured by status, a layer per body and category group."""
    look = _look(settings, lang)
    text = mapdata.TEXT_FIELDS if mapdata.count_leads(session, p, f) <= mapdata.MAX_TEXT_LEADS else ()
    leads = mapdata.lead_points(session, p, f, lang=look["lang"], text_fields=text)
    towns = mapdata.area_frame(session, p, f, level="township")
    return page(render_distribution(leads, towns, text_fields=text, **look), settings, _encoding(request))


@router.get("/status", response_class=HTMLResponse)
def status(request: Request, session: SessionDep, settings: SettingsDep, p: MapPrincipal, f: Filters,
           lang: Lang = None, level: Annotated[str, Query(pattern="^(county|township)$")] = "county") -> Response:
    """Open, overdue, on-time closure rate and rebounds per county or township."""
    look = _look(settings, lang)
    areas = mapdata.status_frame(session, p, f, level=level, now=datetime.now(UTC), lang=look["lang"])
    return page(render_status(areas, **look), settings, _encoding(request))


@router.get("/hotspots", response_class=HTMLResponse)
def hotspots(request: Request, session: SessionDep, settings: SettingsDep, p: MapPrincipal, f: Filters,
             lang: Lang = None, unit: Annotated[str | None, Query(pattern="^(township|grid)$")] = None,
             cell_m: Annotated[float | None, Query(ge=50, le=50_000)] = None) -> Response:
    """Significant hot and cold spots (Gi*, FDR) on townships and a grid, with a heat layer."""
    look = _look(settings, lang)
    # Township Gi* reads the leads' township codes counted per township: no point-in-polygon.
    leads, towns = mapdata.hotspot_frames(session, p, f)
    crs: Any
    if len(towns):
        crs = gcrs.metric_crs_for(tuple(towns.total_bounds))
    elif len(leads):
        crs = gcrs.metric_crs_for((leads["lon"].min(), leads["lat"].min(), leads["lon"].max(), leads["lat"].max()))
    else:
        crs = 4527
    try:
        m = render_hotspots(leads, towns, crs=crs, cell_size=cell_m, township_counts="count", unit=unit, **look)
    except (HotspotInputError, MapInputError) as exc:
        raise Invalid("cell_m", cell_m, str(exc)) from None
    return page(m, settings, _encoding(request))


@router.get("/nearby", response_class=HTMLResponse)
def nearby(request: Request, session: SessionDep, settings: SettingsDep, p: MapPrincipal, f: Filters,
           lon: Annotated[float, Query(ge=-180, le=180)], lat: Annotated[float, Query(ge=-90, le=90)],
           datum: str = "wgs84", radius_m: Annotated[float, Query(gt=0, le=50_000)] = 2000.0,
           lang: Lang = None) -> Response:
    """Cases around the staff member's position, nearest first (open cases unless status= is given)."""
    look = _look(settings, lang)
    if not f.status:
        f = replace(f, status=OPEN_STATES)
    cases, x, y = mapdata.nearby_frame(session, p, f, lon, lat, datum=datum, radius_m=radius_m,
                                       lang=look["lang"])
    crs = gcrs.metric_crs_for((x, y, x, y))
    return page(render_nearby(cases, x, y, radius_m, crs=crs, **look), settings, _encoding(request))


@router.get("/monitoring", response_class=HTMLResponse)
def monitoring(request: Request, session: SessionDep, settings: SettingsDep, p: MapPrincipal,
               lang: Lang = None) -> Response:
    """Online monitoring points with their latest status."""
    look = _look(settings, lang)
    points = mapdata.monitoring_frame(session, p)
    counties = mapdata.area_frame(session, p, LeadFilter(), level="county")
    return page(render_monitoring(points, counties, **look), settings, _encoding(request))
