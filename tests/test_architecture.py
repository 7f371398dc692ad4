"""The dependency direction of DESIGN.md, checked on the import statements themselves."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["geo", "layers", "maps", "api"]
OURS = set(PACKAGES)
# package -> which of our packages it may import
ALLOWED = {"geo": {"geo"}, "layers": {"geo", "layers"}, "maps": {"geo", "maps"},
           "api": {"geo", "layers", "maps", "api"}}
# third-party library -> the only package allowed to import it
OWNED = {"sqlalchemy": "layers", "geoalchemy2": "layers", "alembic": "layers", "folium": "maps",
         "branca": "maps", "fastapi": "api", "starlette": "api", "uvicorn": "api", "typer": "api"}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module.split(".")[0], node.lineno))
    return out


def _violations() -> list[str]:
    bad = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for mod, line in _imports(path):
                where = f"{path.relative_to(REPO)}:{line}"
                if mod in OURS and mod not in ALLOWED[pkg]:
                    bad.append(f"{where} imports {mod} ({pkg} may import {sorted(ALLOWED[pkg])})")
                if mod in OWNED and OWNED[mod] != pkg:
                    bad.append(f"{where} imports {mod}, which only {OWNED[mod]} may import")
    return bad


def test_dependency_direction() -> None:
    assert _violations() == []


def test_checker_catches_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself can fail: a geo module importing layers and folium is reported."""
    fake = tmp_path / "geo"
    fake.mkdir()
    (fake / "bad.py").write_text("import folium\nfrom layers import models\n")
    for pkg in PACKAGES[1:]:
        (tmp_path / pkg).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = _violations()
    assert any("imports layers" in v for v in found)
    assert any("imports folium" in v for v in found)


def test_packages_listed_in_pyproject() -> None:
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {str(p.parent.relative_to(REPO)).replace("/", ".") for pkg in PACKAGES
               for p in (REPO / pkg).rglob("__init__.py")}
    assert on_disk <= listed, f"packages missing from pyproject: {sorted(on_disk - listed)}"
