"""Leads for the map tests (on the tiny layer of tests/conftest.py) and a decoder of map pages."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import bindparam, update

from layers import leads as lead_store
from layers.leads import LeadIn
from layers.models import Lead
from tests.conftest import NOW, Db

XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "</script><script>alert(1)</script>"
CATEGORIES = ("catering_fumes", "industrial_gas", "construction_dust", "industrial_wastewater")
STATUSES = ("received", "dispatched", "signed", "in_progress", "rectified", "verified", "closed")


@dataclass
class Seeded:
    """What was stored: lead code -> (county, category, status)."""

    leads: dict[str, tuple[str, str, str]]
    on_time: set[str]

    def codes(self, county: str | None = None, category: str | None = None) -> set[str]:
        return {c for c, (k, cat, _) in self.leads.items()
                if (county is None or k == county) and (category is None or cat == category)}


def seed_leads(db: Db, n: int, *, seed: int = 5) -> Seeded:
    """``n`` leads spread over the tiny layer's two counties; the first two carry XSS text.

    Statuses cycle through the workflow; open leads get a deadline, a third of them already past
    (overdue at ``NOW``), closed ones close before or after their deadline alternately.
    """
    rng = np.random.default_rng(seed)
    lon = rng.uniform(117.003, 117.197, n)
    lat = rng.uniform(34.003, 34.097, n)
    items = []
    for i in range(n):
        desc = XSS_IMG if i == 0 else XSS_SCRIPT if i == 1 else f"线索 {i}"
        items.append(LeadIn(channel="12345", external_id=f"map-{seed}-{i}", category=CATEGORIES[i % 4],
                            reported_at=NOW - timedelta(days=int(i % 30)), description=desc,
                            address=XSS_SCRIPT if i == 1 else f"测试路 {i} 号",
                            lon=float(lon[i]), lat=float(lat[i])))
    out: dict[str, tuple[str, str, str]] = {}
    on_time: set[str] = set()
    rows = []
    with db.uow() as s:
        res = lead_store.submit(s, items, actor="test", now=NOW)
        for i, o in enumerate(res):
            status = STATUSES[i % len(STATUSES)]
            due = NOW + timedelta(days=-2 if i % 3 == 0 else 5)
            closed_at = (due - timedelta(days=1) if i % 2 else due + timedelta(days=1)) if status == "closed" else None
            rows.append({"lid": o.lead_id, "st": status, "due": due, "closed": closed_at})
            out[o.code] = (o.assignment["county_code"], items[i].category, status)
            if closed_at is not None and closed_at <= due:
                on_time.add(o.code)
        # one executemany, not one statement per lead (the benchmark seeds 100,000)
        t = Lead.__table__
        s.execute(update(t).where(t.c.id == bindparam("lid"))
                  .values(status=bindparam("st"), due_at=bindparam("due"), closed_at=bindparam("closed")), rows)
    return Seeded(out, on_time)


_PAYLOAD = re.compile(r"var lead_cluster_\w+_payload = (\{.*?\});\n", re.S)


def _col(c: dict[str, Any], n: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(c["b"]), dtype=np.uint8).reshape(n, c["w"]) if n else np.zeros((0, c["w"]))
    return (raw.astype(np.int64) * (256 ** np.arange(c["w"]))).sum(axis=1)


def map_leads(html: str) -> list[dict[str, Any]]:
    """The leads embedded in a distribution page, decoded as the browser does (lead_cluster.js)."""
    m = _PAYLOAD.search(html)
    assert m, "no lead payload in the page"
    p = json.loads(m.group(1))
    n = p["n"]
    pre, num = _col(p["code_prefix"], n), _col(p["code_number"], n)
    st, body, cat = _col(p["status"], n), _col(p["body"], n), _col(p["category"], n)
    lon = p["lon"]["o"] + _col(p["lon"], n) * p["lon"]["s"]
    lat = p["lat"]["o"] + _col(p["lat"], n) * p["lat"]["s"]
    texts = [(t["dict"], _col(t["col"], n)) for t in p["texts"]]
    out = []
    for i in range(n):
        prefix, width = p["code_prefixes"][pre[i]]
        code = prefix + (format(int(num[i]), "X").zfill(width) if width > 0 else "")
        out.append({"code": code, "status": p["status_labels"][st[i]], "body": p["bodies"][body[i]],
                    "category": p["categories"][cat[i]], "lon": float(lon[i]), "lat": float(lat[i]),
                    "texts": [d[idx[i]] for d, idx in texts]})
    return out
