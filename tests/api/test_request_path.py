"""The request path under load: who is asking (kept for a few seconds) and database turns."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from layers.models import User
from tests.api.conftest import PASSWORD, Api


def _client(api: Api, **settings: object) -> TestClient:
    return TestClient(create_app(api.db.settings(**settings)))


def _disable(api: Api, username: str, *, roles: list[str] | None = None) -> None:
    with api.db.uow() as s:
        values: dict[str, object] = {"active": False} if roles is None else {"roles": roles}
        s.execute(update(User).where(User.username == username).values(**values))


def test_without_the_cache_a_disabled_user_is_refused_at_once(api: Api) -> None:
    with _client(api, auth_cache_seconds=0) as c:
        h = api.as_("leader")
        assert c.get("/users/me", headers=h).status_code == 200
        _disable(api, "leader")
        r = c.get("/users/me", headers=h)
        assert r.status_code == 401 and "disabled" in r.json()["detail"]


def test_the_cache_keeps_roles_for_its_time_and_no_longer(api: Api) -> None:
    lead = {"channel": "12345", "category": "catering_fumes", "reported_at": "2026-05-01T09:00:00+08:00",
            "lon": 117.2, "lat": 34.2}
    with _client(api, auth_cache_seconds=2) as c:
        h = api.as_("dispatcher")
        assert c.get("/leads", headers=h).status_code == 200
        _disable(api, "dispatcher", roles=["leader"])  # demoted: may no longer file leads
        t0 = time.monotonic()
        # Within the cache time the worker still knows the old roles (the documented trade-off)...
        r = c.post("/leads", headers=h, json={**lead, "external_id": "c1"})
        if time.monotonic() - t0 < 1.5:  # a stalled machine may have let the entry expire
            assert r.status_code == 201, r.text
        time.sleep(max(0.0, 2.2 - (time.monotonic() - t0)))
        # ...and afterwards reads the new ones.
        r = c.post("/leads", headers=h, json={**lead, "external_id": "c2"})
        assert r.status_code == 403, r.text


def test_unknown_users_are_never_kept(api: Api) -> None:
    """A token for a user who does not exist yet must not be remembered as refused or allowed."""
    with _client(api, auth_cache_seconds=60) as c:
        from api.auth import issue_token
        from layers import users

        with api.db.uow() as s:
            users.add_user(s, "latecomer", PASSWORD, ["leader"])
            tok, _ = issue_token(users.get_user(s, "latecomer"), secret=c.app.state.secret,  # type: ignore[arg-type, attr-defined]
                                 ttl_minutes=5)
            s.execute(update(User).where(User.username == "latecomer").values(active=False))
        h = {"Authorization": f"Bearer {tok}"}
        assert c.get("/users/me", headers=h).status_code == 401
        with api.db.uow() as s:
            s.execute(update(User).where(User.username == "latecomer").values(active=True))
        assert c.get("/users/me", headers=h).status_code == 200


def test_a_request_waits_for_a_database_turn_then_gets_503(api: Api) -> None:
    with _client(api, db_concurrency=1, db_wait_seconds=0.3) as c:
        h = api.as_("leader")
        assert c.get("/leads", headers=h).status_code == 200
        turns = c.app.state.db_turns  # type: ignore[attr-defined]
        assert c.portal is not None
        c.portal.call(turns.acquire)  # somebody else holds the only turn
        try:
            t0 = time.perf_counter()
            r = c.get("/leads", headers=h)
            waited = time.perf_counter() - t0
        finally:
            c.portal.call(turns.release)
        assert r.status_code == 503, r.text
        assert r.headers.get("Retry-After") and "capacity" in r.json()["detail"]
        assert waited >= 0.3
        # The turn is free again, and the failed request gave back nothing it did not take.
        assert c.get("/leads", headers=h).status_code == 200
        assert turns.value == 1


@pytest.mark.parametrize("n", [12])
def test_more_requests_than_turns_all_finish(api: Api, n: int) -> None:
    """More concurrent requests than turns queue up and all finish (none is refused or lost)."""
    import concurrent.futures

    with _client(api, db_concurrency=2, db_wait_seconds=30) as c:
        h = api.as_("dispatcher")

        def one(i: int) -> int:
            return c.post("/leads", headers=h, json={
                "channel": "12345", "category": "catering_fumes", "external_id": f"turn-{i}",
                "reported_at": "2026-05-01T09:00:00+08:00", "lon": 117.2, "lat": 34.2}).status_code

        with concurrent.futures.ThreadPoolExecutor(n) as ex:
            codes = list(ex.map(one, range(n)))
        assert codes == [201] * n
        assert c.app.state.db_turns.value == 2  # type: ignore[attr-defined]


def test_a_kept_token_still_expires_on_time(api: Api) -> None:
    """The cache keeps a verified token, not a pass: its expiry is checked on every request."""
    from datetime import UTC, datetime, timedelta

    from api.auth import issue_token
    from layers import users

    with _client(api, auth_cache_seconds=60) as c:
        with api.db.uow() as s:
            user = users.get_user(s, "leader")
            assert user is not None
            # Issued 58 s ago for one minute: expires 2 s from now (exp has whole seconds).
            tok, exp = issue_token(user, secret=c.app.state.secret, ttl_minutes=1,  # type: ignore[attr-defined]
                                   now=datetime.now(UTC) - timedelta(seconds=58))
        h = {"Authorization": f"Bearer {tok}"}
        assert c.get("/users/me", headers=h).status_code == 200
        time.sleep(max(0.0, (exp - datetime.now(UTC)).total_seconds()) + 1.1)
        r = c.get("/users/me", headers=h)
        assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_read_routes_run_without_a_transaction_on_postgis_and_leave_none_behind(api: Api) -> None:
    from sqlalchemy import text

    with _client(api) as c:
        state = c.app.state  # type: ignore[attr-defined]
        with state.read_sessions() as s:
            s.execute(text("SELECT 1"))
            raw = s.connection().connection.dbapi_connection
            pg = api.db.backend == "postgis"
            assert bool(getattr(raw, "autocommit", False)) is pg
        with state.sessions() as s:  # the same pooled connection, back to transactions
            s.execute(text("SELECT 1"))
            raw = s.connection().connection.dbapi_connection
            assert not getattr(raw, "autocommit", False)
        # And the read routes answer on it.
        h = api.as_("dispatcher")
        assert c.get("/leads", headers=h).status_code == 200
        near = {"lon": 117.05, "lat": 34.02, "radius_m": 500}
        assert c.get("/leads/nearby", headers=h, params=near).status_code == 200
        assert c.get("/jurisdictions/lookup", headers=h, params={"lon": 117.05, "lat": 34.02}).status_code == 200
