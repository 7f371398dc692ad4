"""Users (admin) and the caller's own profile."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter

from api.deps import PrincipalDep, SessionDep, require
from api.schemas import UserCreate, UserPublic
from layers import users
from layers.users import Principal

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserPublic)
def me(session: SessionDep, p: PrincipalDep) -> Any:
    """Who you are: roles and scope."""
    return UserPublic.model_validate(users.get_user(session, p.username), from_attributes=True)


@router.post("", response_model=UserPublic, status_code=201)
def create_user(body: UserCreate, session: SessionDep, _: Annotated[Principal, require("admin")]) -> Any:
    """Create a user (admin)."""
    user = users.add_user(session, body.username, body.password, body.roles,
                          display_name=body.display_name, scope_codes=body.scope_codes,
                          scope_bodies=body.scope_bodies)
    return UserPublic.model_validate(user, from_attributes=True)
