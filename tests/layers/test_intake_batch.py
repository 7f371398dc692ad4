"""Group commit of concurrent single-lead intakes (layers.intake_batch), on both backends."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from layers import audit, leads
from layers.errors import Conflict, Invalid
from layers.intake_batch import IntakeBatcher
from layers.models import Dispatch, Lead
from tests.conftest import NOW, Db


def _raw(ext: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"channel": "wechat", "external_id": ext, "category": "catering_fumes",
                            "reported_at": NOW.isoformat(), "lon": 117.05, "lat": 34.02}
    base.update(kw)
    return base


class _Gate:
    """Holds the first batch until every other request has queued, so the second batch is large."""

    def __init__(self, waiting: int, batcher_ref: list[IntakeBatcher]) -> None:
        self.waiting = waiting
        self.batcher_ref = batcher_ref
        self.first = True
        self.seen: list[int] = []

    def __call__(self, session: Any, items: Sequence[leads.LeadIn], actor: str, now: datetime) -> list[leads.Outcome]:
        if self.first:
            self.first = False
            b = self.batcher_ref[0]
            for _ in range(500):  # the queue fills while this batch is "slow"
                if len(b._queue) >= self.waiting:  # read from the batch's thread: a list's len is atomic
                    break
                threading.Event().wait(0.01)
        self.seen.append(len(items))
        if any(it.external_id == "boom" for it in items):
            raise Conflict("simulated failure of the whole transaction")
        return leads.submit(session, items, actor=actor, now=NOW)


def _run_concurrently(batcher: IntakeBatcher, raws: list[dict[str, Any]]) -> list[Any]:
    """The first request alone (its batch is held at the gate), then all the others at once."""

    async def one(i: int) -> Any:
        try:
            return await batcher.intake(raws[i], actor=f"user{i % 2}")
        except Exception as exc:  # the test inspects it
            return exc

    async def main() -> list[Any]:
        first = asyncio.create_task(one(0))
        await asyncio.sleep(0.05)  # its batch is now held at the gate
        rest = [asyncio.create_task(one(i)) for i in range(1, len(raws))]
        return [await first, *[await t for t in rest]]

    return asyncio.run(main())


def test_concurrent_intakes_share_a_transaction_and_each_gets_its_answer(seeded: Db) -> None:
    ref: list[IntakeBatcher] = []
    gate = _Gate(waiting=15, batcher_ref=ref)
    batcher = IntakeBatcher(seeded.sessions, gate)
    ref.append(batcher)
    raws = [_raw(f"g{i}", lon=117.01 + i * 0.005) for i in range(16)]
    raws.append(_raw("g3"))  # the same lead twice: stored once, both callers get its code
    raws.append(_raw("bad", category="no_such_category"))
    raws.append(_raw("late", reported_at="2099-01-01T00:00:00+08:00"))
    results = _run_concurrently(batcher, raws)

    assert batcher.stats.largest >= 10, gate.seen  # the queued requests went in together
    assert isinstance(results[-2], Invalid) and results[-2].field == "category"
    assert isinstance(results[-1], Invalid) and results[-1].field == "reported_at"
    outs = results[:17]
    assert all(isinstance(o, leads.Outcome) for o in outs), outs
    assert outs[16].code == outs[3].code and outs[16].lead_id == outs[3].lead_id
    assert sum(o.created for o in outs) == 16
    with seeded.uow() as s:
        assert s.scalar(select(func.count(Lead.id))) == 16
        assert s.scalar(select(func.count(Dispatch.id))) == 16
        actors = dict(s.execute(select(Lead.external_id, Lead.township_code)).all())
        assert actors["g0"] == outs[0].assignment["township_code"]
        assert audit.verify(s).ok


def test_a_failing_batch_is_retried_one_by_one_so_only_the_culprit_fails(seeded: Db) -> None:
    ref: list[IntakeBatcher] = []
    gate = _Gate(waiting=6, batcher_ref=ref)
    batcher = IntakeBatcher(seeded.sessions, gate)
    ref.append(batcher)
    raws = [_raw("first")] + [_raw(f"ok{i}") for i in range(5)] + [_raw("boom")]
    results = _run_concurrently(batcher, raws)

    assert isinstance(results[-1], Conflict)
    assert all(isinstance(o, leads.Outcome) and o.created for o in results[:-1]), results
    assert batcher.stats.retried_alone >= 2
    with seeded.uow() as s:
        stored = set(s.scalars(select(Lead.external_id)))
    assert stored == {"first"} | {f"ok{i}" for i in range(5)}


def test_max_batch_must_be_positive(seeded: Db) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        IntakeBatcher(seeded.sessions, lambda *a: [], max_batch=0)


def test_window_must_be_a_short_non_negative_time(seeded: Db) -> None:
    with pytest.raises(ValueError, match="window_s"):
        IntakeBatcher(seeded.sessions, lambda *a: [], window_s=-0.01)
    with pytest.raises(ValueError, match="window_s"):
        IntakeBatcher(seeded.sessions, lambda *a: [], window_s=5.0)


def test_a_lone_caller_never_waits_in_the_gathering_window(seeded: Db) -> None:
    batcher = IntakeBatcher(seeded.sessions, lambda s, items, actor, now: leads.submit(s, items, actor=actor, now=NOW),
                            window_s=1.0)

    async def one_after_another() -> list[leads.Outcome]:
        return [await batcher.intake(_raw(f"alone{i}"), actor="u") for i in range(3)]

    t0 = time.monotonic()
    outs = asyncio.run(one_after_another())
    assert all(o.created for o in outs)
    assert batcher.stats.waited == 0 and batcher.stats.largest == 1
    assert time.monotonic() - t0 < 1.0  # one caller after another: no call sat out the 1 s window


def test_concurrent_intake_gathers_until_the_window_or_a_full_batch(seeded: Db) -> None:
    """Requests queued together make the next batch gather; a late arrival joins it, and a full
    batch ends the wait before the window does."""
    ref: list[IntakeBatcher] = []
    gate = _Gate(waiting=2, batcher_ref=ref)  # "first" is held until two others queue behind it
    batcher = IntakeBatcher(seeded.sessions, gate, window_s=1.0, max_batch=3)
    ref.append(batcher)
    plain = IntakeBatcher(seeded.sessions, lambda s, items, actor, now: leads.submit(s, items, actor=actor, now=NOW))

    async def main() -> tuple[dict[str, Any], float]:
        await plain.intake(_raw("warm"), actor="u")  # caches loaded: the first batch below is quick
        first = asyncio.create_task(batcher.intake(_raw("first"), actor="u"))
        await asyncio.sleep(0.05)
        pair = [asyncio.create_task(batcher.intake(_raw(e), actor="u")) for e in ("b", "c")]
        pair_queued = time.monotonic()
        await first
        await asyncio.sleep(0.1)  # b and c's batch is gathering now
        late = asyncio.create_task(batcher.intake(_raw("late"), actor="u"))
        got = dict(zip(("b", "c", "late"), await asyncio.gather(*pair, late), strict=True))
        return got, time.monotonic() - pair_queued

    results, elapsed = asyncio.run(main())
    assert gate.seen == [1, 3], gate.seen  # "late" shared b and c's transaction
    assert batcher.stats.waited == 1
    assert elapsed < 0.95, elapsed  # the third request filled the batch: no waiting out the 1 s
    assert all(isinstance(o, leads.Outcome) and o.created for o in results.values())


def test_a_cancelled_caller_still_gets_its_lead_stored_and_others_their_answers(seeded: Db) -> None:
    """A request that goes away mid-batch (client timeout) neither loses its lead nor breaks the batch."""
    ref: list[IntakeBatcher] = []
    gate = _Gate(waiting=2, batcher_ref=ref)
    batcher = IntakeBatcher(seeded.sessions, gate)
    ref.append(batcher)

    async def main() -> list[Any]:
        first = asyncio.create_task(batcher.intake(_raw("held"), actor="u"))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(batcher.intake(_raw("gone"), actor="u"))
        stays = asyncio.create_task(batcher.intake(_raw("stays"), actor="u"))
        await asyncio.sleep(0.01)
        gone.cancel()
        return [await first, await stays, gone.cancelled()]

    held, stays, cancelled = asyncio.run(main())
    assert cancelled and held.created and stays.created
    with seeded.uow() as s:
        assert set(s.scalars(select(Lead.external_id))) == {"held", "gone", "stays"}
