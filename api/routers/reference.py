"""Reference data: bodies, categories, routing rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from api.deps import PrincipalDep, SessionDep, require
from api.schemas import BodyPublic, CategoryPublic, RoutingRuleCreate, RoutingRulePublic
from layers import routing
from layers.users import Principal

router = APIRouter(tags=["reference"])


@router.get("/bodies", response_model=list[BodyPublic])
def bodies(session: SessionDep, _: PrincipalDep) -> list[Any]:
    """The responsible bodies (retired ones included, marked inactive)."""
    return [BodyPublic.model_validate(b, from_attributes=True)
            for b in routing.list_bodies(session)]


@router.get("/categories", response_model=list[CategoryPublic])
def categories(session: SessionDep, _: PrincipalDep) -> list[Any]:
    """Lead categories with their group and default urgency."""
    return [CategoryPublic.model_validate(c, from_attributes=True)
            for c in routing.list_categories(session)]


@router.get("/routing-rules", response_model=list[RoutingRulePublic])
def rules(session: SessionDep, _: PrincipalDep,
          include_retired: Annotated[bool, Query()] = False) -> list[Any]:
    """Routing rules in priority order (first match wins)."""
    return [RoutingRulePublic.model_validate(r, from_attributes=True)
            for r in routing.list_rules(session, include_retired=include_retired)]


@router.post("/routing-rules", response_model=RoutingRulePublic, status_code=201)
def add_rule(body: RoutingRuleCreate, session: SessionDep,
             p: Annotated[Principal, require("admin")]) -> Any:
    """Add a routing rule (admin)."""
    rule = routing.add_rule(session, actor=p.username, now=datetime.now(UTC), **body.model_dump())
    return RoutingRulePublic.model_validate(rule, from_attributes=True)


@router.delete("/routing-rules/{rule_id}", status_code=204)
def retire_rule(rule_id: Annotated[int, Path(ge=1, le=2_147_483_647)], session: SessionDep,
                p: Annotated[Principal, require("admin")]) -> None:
    """Retire a routing rule (admin); leads it routed keep naming it."""
    routing.retire_rule(session, rule_id, actor=p.username, now=datetime.now(UTC))
