"""Screenshots of map pages opened by the browser tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"


def screenshot(visit: Any, name: str) -> Path:
    """Save the page of ``visit`` as tests/artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    visit.page.screenshot(path=str(path))
    return path
