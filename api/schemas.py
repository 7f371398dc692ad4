"""Request and response models (``…Create`` in, ``…Public`` out)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from layers.leads import Channel

DatumName = Literal["wgs84", "cgcs2000", "gcj02", "bd09"]


class Health(BaseModel):
    status: Literal["ok"]
    backend: Literal["spatialite", "postgis"]
    schema_revision: str
    active_boundary_layer: str | None


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime


class LeadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    external_id: str = Field(min_length=1, max_length=120)
    category: str = Field(min_length=1, max_length=40)
    reported_at: datetime
    description: str = Field(default="", max_length=4000)
    address: str = Field(default="", max_length=500)
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    datum: DatumName = "wgs84"
    urgency: Literal["normal", "urgent", "emergency"] | None = None
    complainant_name: str | None = Field(default=None, max_length=120)
    complainant_phone: str | None = Field(default=None, max_length=40)
    public: bool = False


class Candidate(BaseModel):
    code: str
    distance_m: float


class AssignmentPublic(BaseModel):
    city_code: str | None
    county_code: str | None
    township_code: str | None
    body_code: str | None
    method: str
    reason: str
    distance_m: float | None = None
    candidates: list[dict[str, Any]] = []
    review: bool
    review_reason: str = ""
    boundary_version_id: int | None
    routing_rule_id: int | None
    routing_reason: str | None = None


class LeadCreated(BaseModel):
    code: str
    id: int
    created: bool = Field(description="false when this channel + external_id was already stored")
    assignment: AssignmentPublic | None


class LeadPublic(BaseModel):
    id: int
    code: str
    channel: str
    external_id: str
    category: str
    urgency: str
    status: str
    description: str
    address: str
    reported_at: datetime
    received_at: datetime
    lon: float | None
    lat: float | None
    orig_lon: float | None
    orig_lat: float | None
    orig_datum: str | None
    city_code: str | None
    county_code: str | None
    township_code: str | None
    body_code: str | None
    method: str
    reason: str
    distance_m: float | None
    candidates: list[dict[str, Any]]
    review: bool
    review_reason: str
    boundary_version_id: int | None
    routing_rule_id: int | None
    due_at: datetime | None


class LeadPage(BaseModel):
    total: int = Field(description="matching leads, counted exactly up to 10,000; see total_exact")
    total_exact: bool = Field(True, description="false when more than 10,000 leads match: total is then a lower bound")
    page: int
    page_size: int
    items: list[LeadPublic]


class DispatchPublic(BaseModel):
    at: datetime
    actor: str
    trigger: str
    boundary_version_id: int | None
    routing_rule_id: int | None
    city_code: str | None
    county_code: str | None
    township_code: str | None
    body_code: str | None
    method: str
    reason: str


class AreaRef(BaseModel):
    code: str
    name: str


class LookupPublic(BaseModel):
    city: AreaRef | None
    county: AreaRef | None
    township: AreaRef | None
    method: str
    reason: str
    version: int | None
    distance_m: float | None = None
    candidates: list[dict[str, Any]] = []
    lon: float = Field(description="storage (WGS84) longitude the lookup used")
    lat: float


class BodyPublic(BaseModel):
    code: str
    name: str
    name_en: str
    kind: str
    remit: str
    active: bool


class CategoryPublic(BaseModel):
    code: str
    name: str
    name_en: str
    group: str
    urgency: str


class RoutingRuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=0, le=100000)
    body_code: str = Field(min_length=1, max_length=40)
    category_code: str | None = Field(default=None, max_length=40)
    category_group: str | None = Field(default=None, max_length=20)
    jurisdiction_level: Literal["city", "county", "township"] | None = None
    jurisdiction_code: str | None = Field(default=None, max_length=20)
    note: str = Field(default="", max_length=500)


class RoutingRulePublic(RoutingRuleCreate):
    id: int
    created_at: datetime
    created_by: str
    retired_at: datetime | None


class JurisdictionPublic(BaseModel):
    code: str
    name: str
    level: str
    parent_code: str | None
    area_km2: float
    synthetic: bool


class BoundaryVersionPublic(BaseModel):
    id: int
    layer: str
    status: str
    datum: str
    source: str
    created_at: datetime
    created_by: str
    activated_at: datetime | None
    activated_by: str | None
    effective_from: datetime | None
    effective_to: datetime | None


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=3, max_length=80, pattern=r"^[A-Za-z0-9_.\-]+$")
    password: str = Field(min_length=10, max_length=200)
    roles: list[Literal["admin", "dispatcher", "leader", "field", "gis", "inspector"]] = Field(min_length=1)
    display_name: str = Field(default="", max_length=120)
    scope_codes: list[str] = []
    scope_bodies: list[str] = []


class UserPublic(BaseModel):
    username: str
    display_name: str
    roles: list[str]
    scope_codes: list[str]
    scope_bodies: list[str]
    active: bool
