"""Append-only, hash-chained audit events.

Each event's hash covers its content and the previous event's hash, so changing, inserting or
deleting a row anywhere breaks the chain from that point on; :func:`verify` names the first bad
event. Writers serialise on the single ``audit_head`` row (a row lock on PostGIS, the write lock
on SpatiaLite), which keeps the chain linear under concurrency.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from layers.db import bulk_insert
from layers.models import AuditEvent, AuditHead

GENESIS = "0" * 64


@dataclass(frozen=True)
class EventIn:
    """An event to record."""

    at: datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    reason: str = ""


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _digest(prev: str, seq: int, ev: Mapping[str, Any]) -> str:
    body = json.dumps(
        {
            "prev": prev,
            "seq": seq,
            "at": _canonical(ev["at"]),
            "actor": ev["actor"],
            "action": ev["action"],
            "entity": ev["entity"],
            "entity_id": str(ev["entity_id"]),
            "before": _canonical(ev["before"]),
            "after": _canonical(ev["after"]),
            "reason": ev["reason"],
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


_HEAD_T = cast(Table, AuditHead.__table__)
# Built once, on the table: every intake batch runs it, and the ORM's bulk-update path (built
# afresh, synchronising the identity map) cost more than the round trip.
_LOCK_HEAD = (update(_HEAD_T).where(_HEAD_T.c.id == 1).values(seq=_HEAD_T.c.seq)
              .returning(_HEAD_T.c.seq, _HEAD_T.c.hash))


def _lock_head(session: Session) -> tuple[int, str]:
    # The UPDATE takes the lock as it reads (one round trip), so two writers cannot chain onto
    # the same hash.
    row = session.connection().execute(_LOCK_HEAD).first()
    if row is None:
        session.execute(insert(AuditHead).values(id=1, seq=0, hash=GENESIS))
        return 0, GENESIS
    return int(row.seq), str(row.hash)


def record(session: Session, events: Iterable[EventIn]) -> int:
    """Append events to the chain inside the caller's unit of work.

    Parameters
    ----------
    session
        The open unit of work; the events commit with the change they describe.
    events
        Events in the order they happened.

    Returns
    -------
    int
        Number of events written.
    """
    seq, prev = _lock_head(session)
    rows: list[dict[str, Any]] = []
    for ev in events:
        seq += 1
        row = {
            "seq": seq,
            "at": ev.at,
            "actor": ev.actor,
            "action": ev.action,
            "entity": ev.entity,
            "entity_id": str(ev.entity_id),
            "before": _canonical(dict(ev.before)),
            "after": _canonical(dict(ev.after)),
            "reason": ev.reason,
        }
        row["prev_hash"] = prev
        row["hash"] = prev = _digest(row["prev_hash"], seq, row)
        rows.append(row)
    if rows:
        bulk_insert(session, AuditEvent.metadata.tables["audit_events"], rows)
        session.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=prev))
    return len(rows)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_id: int | None = None
    first_bad_seq: int | None = None
    problem: str = ""


def verify(session: Session, batch: int = 10_000) -> VerifyResult:
    """Recompute the whole chain and report the first event that does not match.

    Parameters
    ----------
    session
        Any session (read only).
    batch
        Rows fetched per round trip.

    Returns
    -------
    VerifyResult
        ``ok`` and, when not, the first bad event's id and what is wrong with it.
    """
    prev, expected_seq, checked, last_id = GENESIS, 1, 0, 0
    while True:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
        ).scalars().all()
        if not rows:
            break
        for ev in rows:
            last_id = ev.id
            fields = {
                "at": ev.at, "actor": ev.actor, "action": ev.action, "entity": ev.entity,
                "entity_id": ev.entity_id, "before": ev.before, "after": ev.after,
                "reason": ev.reason,
            }
            if ev.seq != expected_seq:
                return VerifyResult(False, checked, ev.id, ev.seq,
                                    f"sequence gap: expected {expected_seq}, found {ev.seq}")
            if ev.prev_hash != prev:
                return VerifyResult(False, checked, ev.id, ev.seq,
                                    "prev_hash does not match the previous event")
            if _digest(prev, ev.seq, fields) != ev.hash:
                return VerifyResult(False, checked, ev.id, ev.seq,
                                    "content does not match its hash (row altered)")
            prev = ev.hash
            expected_seq += 1
            checked += 1
    head = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).first()
    if head is not None and (head.seq != checked or head.hash != prev):
        return VerifyResult(False, checked, None, head.seq,
                            f"chain head says {head.seq} events, found {checked} (events deleted)")
    return VerifyResult(True, checked)
