"""Worker start-up: caches warmed, then the loaded heap frozen out of the collector's scans."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from layers import jurisdictions
from layers.settings import Settings
from tests.conftest import Db


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Freezing is process-wide: give the objects back to the collector after the test."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_start_up_warms_the_boundary_index_then_freezes_the_heap(seeded: Db, unfrozen: None) -> None:
    key = str(seeded.engine.url)
    jurisdictions.INDEX_CACHE._indexes.pop(key, None)  # as in a fresh worker
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(seeded.settings(gc_freeze=True))):
        frozen = gc.get_freeze_count()
        # Libraries, the app and the boundary index: far more than a bare interpreter's heap.
        assert frozen > 50_000, frozen
        assert key in jurisdictions.INDEX_CACHE._indexes  # loaded before the freeze, not on first use


def test_start_up_without_freezing_leaves_the_collector_alone(seeded: Db, unfrozen: None) -> None:
    with TestClient(create_app(seeded.settings())):
        assert gc.get_freeze_count() == 0


def test_an_unmigrated_database_does_not_stop_start_up(tmp_path: Path, unfrozen: None,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'empty.sqlite'}", secret_key="k" * 40)
    with caplog.at_level(logging.WARNING, logger="leadgrid"), TestClient(create_app(settings)) as client:
        assert client.get("/openapi.json").status_code == 200
    assert any("warm-up skipped" in r.getMessage() for r in caplog.records)


def test_opentelemetry_instrumentation_follows_the_setting(seeded: Db) -> None:
    off = create_app(seeded.settings())
    on = create_app(seeded.settings(otel=True))
    assert not any(off._telemetry[k] for k in ("tracing", "metrics", "logs", "operation_spans"))
    assert all(on._telemetry[k] for k in ("tracing", "metrics", "logs", "operation_spans"))
