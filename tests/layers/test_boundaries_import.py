"""Import formats, encodings, CRSs and datums; staging never touches the active version."""

from __future__ import annotations

import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from geo import crs as gcrs
from layers import jurisdictions
from layers.errors import Invalid
from layers.jurisdictions import layer_frame
from tests.conftest import NOW, Db

NAMES = ["甲一镇", "徐庄镇"]
BOXES = [box(117.00, 34.00, 117.05, 34.05), box(117.05, 34.00, 117.10, 34.05)]


def _frame(crs: int = 4326) -> gpd.GeoDataFrame:
    g = gpd.GeoDataFrame({"DM": ["320001001", "320001002"], "MC": NAMES}, geometry=BOXES, crs=4326)
    return g.to_crs(crs) if crs != 4326 else g


def _zip_shapefile(tmp: Path, frame: gpd.GeoDataFrame, encoding: str, *, keep: tuple[str, ...]) -> Path:
    folder = tmp / f"shp_{encoding}_{'_'.join(keep)}"
    folder.mkdir()
    frame.to_file(folder / "towns.shp", engine="pyogrio", encoding=encoding)
    out = tmp / f"{folder.name}.zip"
    with zipfile.ZipFile(out, "w") as z:
        for p in folder.iterdir():
            if p.suffix in (".shp", ".shx", ".dbf") or p.suffix in keep:
                z.write(p, p.name)
    return out


def _import(db: Db, path: Path, **kw: object) -> jurisdictions.ImportReport:
    args: dict = {"level": "township", "datum": "cgcs2000", "mapping": "code=DM,name=MC", "layer": "new",
                  "actor": "test", "now": NOW}
    args.update(kw)
    with db.uow() as s:
        return jurisdictions.import_layer(s, path, **args)


def _stored(db: Db, layer: str = "new") -> gpd.GeoDataFrame:
    with db.uow() as s:
        v = next(v for v in jurisdictions.list_versions(s) if v.layer == layer)
        return layer_frame(s, v.id)


def test_gbk_shapefile_without_cpg_or_prj_in_gauss_kruger_zone_39(db: Db, tmp_path: Path) -> None:
    # CGCS2000 3-degree Gauss-Krüger zone 39 with zone prefix (EPSG:4527), GBK attributes, no
    # .cpg and no .prj: what a bureau's export often looks like.
    path = _zip_shapefile(tmp_path, _frame(4527), "GBK", keep=())
    with pytest.raises(Invalid, match="EPSG:4527"):
        _import(db, path)
    rep = _import(db, path, crs="EPSG:4527")
    assert (rep.encoding, rep.encoding_source) == ("gb18030", "detected")
    stored = _stored(db)
    assert list(stored.name) == NAMES
    assert np.allclose(stored.total_bounds, [117.0, 34.0, 117.1, 34.05], atol=1e-7)


def test_utf8_shapefile_with_cpg_and_prj(db: Db, tmp_path: Path) -> None:
    path = _zip_shapefile(tmp_path, _frame(4548), "UTF-8", keep=(".cpg", ".prj"))
    rep = _import(db, path)
    assert rep.encoding_source == ".cpg" and rep.encoding == "utf-8" and "4548" in (rep.source_crs or "")
    assert list(_stored(db).name) == NAMES


def test_geopackage_layer_and_declared_gcj02_datum(db: Db, tmp_path: Path) -> None:
    path = tmp_path / "towns.gpkg"
    _frame().to_file(path, layer="towns", driver="GPKG", engine="pyogrio")
    _import(db, path, gpkg_layer="towns", datum="gcj02", layer="gcj")
    stored = _stored(db, "gcj")
    # GCJ-02 lies ~500 m east-south of WGS84 here: the stored polygon moves back west.
    x, y = gcrs.gcj02_to_wgs84(117.0, 34.0)
    assert np.isclose(stored.total_bounds[0], x, atol=1e-7) and stored.total_bounds[0] < 117.0 - 0.003
    assert 34.0 < stored.total_bounds[1] <= y + 1e-9  # and north: WGS84 lies north of GCJ-02 here


def test_level_mapped_from_a_field_and_validation_in_the_report(db: Db, tmp_path: Path) -> None:
    g = gpd.GeoDataFrame({"DM": ["320001", "320001001", "320001002"], "MC": ["县", *NAMES],
                          "JB": ["区县", "乡镇", "街道"], "SJ": [None, "320001", "320001"]},
                         geometry=[box(117.0, 34.0, 117.1, 34.05), *BOXES], crs=4326)
    path = tmp_path / "mixed.geojson"
    g.to_file(path, driver="GeoJSON", engine="pyogrio")
    rep = _import(db, path, level=None, mapping="code=DM,name=MC,level=JB,parent=SJ")
    assert rep.level == "county,township" and rep.validation.ok
    assert sorted(_stored(db).level) == ["county", "township", "township"]


def test_staged_import_never_touches_the_active_version(seeded: Db, tmp_path: Path) -> None:
    path = tmp_path / "t.geojson"
    _frame().to_file(path, driver="GeoJSON", engine="pyogrio")
    with seeded.uow() as s:
        before = jurisdictions.active_version(s)
    rep = _import(seeded, path, layer="next")
    with seeded.uow() as s:
        after = jurisdictions.active_version(s)
        assert after is not None and before is not None and after.id == before.id
        staged = next(v for v in jurisdictions.list_versions(s) if v.layer == "next")
        assert staged.status == "staged" and rep.version_id == staged.id


def test_invalid_geometry_is_refused_unless_repair_is_asked_for(db: Db, tmp_path: Path) -> None:
    from shapely.geometry import Polygon

    bow = Polygon([(117.0, 34.0), (117.1, 34.1), (117.1, 34.0), (117.0, 34.1)])
    path = tmp_path / "bow.geojson"
    gpd.GeoDataFrame({"DM": ["320001"], "MC": ["县"]}, geometry=[bow], crs=4326).to_file(
        path, driver="GeoJSON", engine="pyogrio")
    with pytest.raises(Invalid, match="Self-intersection"):
        _import(db, path, level="county")
    rep = _import(db, path, level="county", repair=True)
    assert [f.kind for f in rep.validation.repairs] == ["invalid_geometry"]
    assert _stored(db).geometry.iloc[0].is_valid
