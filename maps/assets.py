"""Offline front-end assets: every JS/CSS file a map uses is served by our app, never a CDN.

``scripts/assets.sh`` installs the pinned npm packages (:data:`NPM_PACKAGES`) into
``<repo>/.assets/node_modules``; the API mounts :func:`asset_root` at :data:`ASSET_URL_PREFIX`.
:func:`localize` rewrites a folium map's element tree so that every ``default_js``/``default_css``
points there. Folium's defaults that our maps do not need (jQuery, Bootstrap, glyphicons,
awesome-markers, Font Awesome, the rotate CSS) are dropped rather than shipped: our markers are
Leaflet ``divIcon``/``circleMarker`` and our legends are plain HTML controls. An element asking for
an asset we do not know raises :class:`UnknownAssetError`, so a new folium element cannot quietly
bring a CDN link back.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import folium
from branca.element import Element

__all__ = [
    "ASSETS",
    "ASSET_URL_PREFIX",
    "DROPPED",
    "NPM_PACKAGES",
    "UnknownAssetError",
    "asset_root",
    "asset_url",
    "external_urls",
    "localize",
    "missing_assets",
]

#: URL under which the app serves ``asset_root()``; override with LEADGRID_ASSET_URL_PREFIX.
ASSET_URL_PREFIX: str = os.environ.get("LEADGRID_ASSET_URL_PREFIX", "/static/vendor").rstrip("/")

#: Pinned npm packages; must match scripts/assets.sh.
NPM_PACKAGES: dict[str, str] = {
    "leaflet": "1.9.4",
    "leaflet.markercluster": "1.5.3",
    "leaflet.heat": "0.2.0",
}

#: folium/branca asset name -> file path relative to node_modules.
ASSETS: dict[str, str] = {
    "leaflet": "leaflet/dist/leaflet.js",
    "leaflet_css": "leaflet/dist/leaflet.css",
    "markerclusterjs": "leaflet.markercluster/dist/leaflet.markercluster.js",
    "markerclustercss": "leaflet.markercluster/dist/MarkerCluster.css",
    "markerclusterdefaultcss": "leaflet.markercluster/dist/MarkerCluster.Default.css",
    "leaflet-heat.js": "leaflet.heat/dist/leaflet-heat.js",
}

#: folium defaults our maps do not use; removed instead of served.
DROPPED: frozenset[str] = frozenset(
    {
        "jquery",
        "bootstrap",
        "bootstrap_css",
        "glyphicons_css",
        "awesome_markers",
        "awesome_markers_css",
        "awesome_markers_font_css",
        "awesome_rotate_css",
    }
)


class UnknownAssetError(ValueError):
    """A map element asks for a JS/CSS asset that is neither served locally nor dropped."""


def asset_root() -> Path:
    """Directory holding the installed npm packages.

    Returns
    -------
    pathlib.Path
        ``$LEADGRID_ASSETS_DIR`` if set, else ``<repo>/.assets/node_modules``.
    """
    env = os.environ.get("LEADGRID_ASSETS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".assets" / "node_modules"


def missing_assets() -> list[str]:
    """Asset files that are not installed, for a clear startup error.

    Returns
    -------
    list of str
        Paths relative to :func:`asset_root` that do not exist (empty when all are present).
    """
    root = asset_root()
    return [rel for rel in sorted(set(ASSETS.values())) if not (root / rel).is_file()]


def asset_url(name: str, prefix: str | None = None) -> str:
    """Local URL of a named asset.

    Parameters
    ----------
    name : str
        A key of :data:`ASSETS`.
    prefix : str, optional
        URL prefix; default :data:`ASSET_URL_PREFIX`.

    Returns
    -------
    str
        ``<prefix>/<package path>``.

    Raises
    ------
    UnknownAssetError
        ``name`` is not a key of :data:`ASSETS`.
    """
    if name not in ASSETS:
        raise UnknownAssetError(f"asset name={name!r} is not served; known: {sorted(ASSETS)}")
    base = (ASSET_URL_PREFIX if prefix is None else prefix).rstrip("/")
    return f"{base}/{ASSETS[name]}"


def _rewrite(pairs: list[tuple[str, str]], owner: str, prefix: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, url in pairs:
        if name in DROPPED:
            continue
        if name not in ASSETS:
            raise UnknownAssetError(
                f"{owner} needs asset {name!r} ({url}); add it to maps.assets.ASSETS "
                f"(and scripts/assets.sh) or to DROPPED"
            )
        out.append((name, asset_url(name, prefix)))
    return out


def localize(m: folium.Map, prefix: str | None = None) -> folium.Map:
    """Point every JS/CSS link of ``m`` and its descendants at our own server.

    Parameters
    ----------
    m : folium.Map
        The map; changed in place (instance attributes shadow the class defaults).
    prefix : str, optional
        URL prefix; default :data:`ASSET_URL_PREFIX`.

    Returns
    -------
    folium.Map
        ``m``, for chaining.

    Raises
    ------
    UnknownAssetError
        An element needs an asset that is neither in :data:`ASSETS` nor in :data:`DROPPED`.
    """
    base = ASSET_URL_PREFIX if prefix is None else prefix
    stack: list[Element] = [m]
    while stack:
        el = stack.pop()
        for attr in ("default_js", "default_css"):
            pairs = getattr(el, attr, None)
            if pairs:
                setattr(el, attr, _rewrite(list(pairs), type(el).__name__, base))
        stack.extend(el._children.values())
    return m


_EXTERNAL = re.compile(r"""<(?:script|link)\b[^>]*?(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)""")


def external_urls(html: str) -> list[str]:
    """Absolute URLs that ``<script src>`` or ``<link href>`` tags of ``html`` would fetch.

    Parameters
    ----------
    html : str
        A rendered map page.

    Returns
    -------
    list of str
        Every ``http://``, ``https://`` or protocol-relative URL in a script or link tag.
    """
    return _EXTERNAL.findall(html)
