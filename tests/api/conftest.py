"""API fixtures: a real app on the test database of each backend, with a user per role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from layers import users
from tests.conftest import Db

PASSWORD = "correct horse battery"
# username -> (roles, scope codes, scope bodies); the tiny layer has counties 320001 and 320002.
USERS = {
    "admin": (["admin"], [], []),
    "dispatcher": (["dispatcher"], [], []),
    "leader": (["leader"], [], []),
    "inspector": (["inspector"], [], []),
    "gis": (["gis"], [], []),
    "field_a": (["field"], ["320001"], []),
    "field_b": (["field"], ["320002"], []),
    "eeb_a": (["field"], ["320001"], ["EEB"]),
}


@dataclass
class Api:
    client: TestClient
    db: Db
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, username: str) -> str:
        if username not in self.tokens:
            r = self.client.post("/auth/token", data={"username": username, "password": PASSWORD})
            assert r.status_code == 200, r.text
            self.tokens[username] = r.json()["access_token"]
        return self.tokens[username]

    def as_(self, username: str) -> dict[str, str]:
        """Authorization header of ``username``."""
        return {"Authorization": f"Bearer {self.token(username)}"}


@pytest.fixture
def api(seeded: Db) -> Iterator[Api]:
    """The app on the seeded database (tiny layer active), one user per role."""
    with seeded.uow() as s:
        for name, (roles, codes, bodies) in USERS.items():
            users.add_user(s, name, PASSWORD, roles, scope_codes=codes, scope_bodies=bodies)
    app = create_app(seeded.settings())
    with TestClient(app) as client:
        yield Api(client, seeded)
