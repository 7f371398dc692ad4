"""Service settings, read from the environment (``LEADGRID_`` prefix) and ``.env``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DB_PATH = Path("var") / "leadgrid.sqlite"


class Settings(BaseSettings):
    """Everything an operator can configure.

    ``database_url`` selects the backend: ``sqlite:///PATH`` is an embedded SpatiaLite file,
    ``postgresql+psycopg://user@host/db`` is PostGIS.
    """

    model_config = SettingsConfigDict(env_prefix="LEADGRID_", env_file=".env", extra="ignore")

    database_url: str = Field(default=f"sqlite:///{DEFAULT_DB_PATH}")
    secret_key: str = Field(
        default="",
        description="HMAC key for bearer tokens; generated and kept in var/secret.key when empty",
    )
    token_ttl_minutes: int = Field(default=480, ge=1, le=60 * 24 * 30)
    assign_tolerance_m: float = Field(default=200.0, ge=0, le=5000)
    near_border_m: float = Field(default=50.0, ge=0, le=1000)
    lang: str = Field(default="zh", pattern="^(zh|en)$")
    tiles: str | None = Field(default=None, description="tile URL template; none by default")
    tiles_attribution: str = "local tiles"
    tianditu_key: str | None = None
    amap_key: str | None = None
    baidu_key: str | None = None
    max_page_size: int = Field(default=1000, ge=1, le=10000)
    escalation_interval_s: int = Field(default=300, ge=10)
    # Duplicates and rebounds at intake (layers.workflow.duplicates).
    duplicate_distance_m: float = Field(default=100.0, ge=0, le=5000,
                                        description="same category within this distance of an open lead")
    duplicate_window_hours: float = Field(default=72.0, ge=0, le=24 * 366,
                                          description="... reported within this many hours of it")
    rebound_distance_m: float = Field(default=100.0, ge=0, le=5000,
                                      description="same category within this distance of a closed lead")
    rebound_days: float = Field(default=90.0, ge=0, le=3660,
                                description="... closed at most this many days before the new report")
    auth_cache_seconds: float = Field(
        default=5.0, ge=0, le=300,
        description="how long a worker trusts a user's roles and scope before reading them again "
        "(a disabled user or changed scope takes effect within this time; 0: read on every request)")
    db_concurrency: int = Field(
        default=10, ge=1, le=200,
        description="requests per worker using the database at once; more wait their turn (at most "
        "db_wait_seconds, then 503). Keep it at or below the connection pool (10 + 10 overflow on PostGIS)")
    db_idle_ping_seconds: float = Field(
        default=10.0, ge=0, le=3600,
        description="PostGIS: test a pooled connection before use when idle this long (0: always)")
    db_wait_seconds: float = Field(default=10.0, gt=0, le=300,
                                   description="longest a request waits for its database turn before a 503")
    intake_batch_window_ms: float = Field(
        default=20.0, ge=0, le=1000,
        description="under concurrent POST /leads, a batch waits this long for more leads to share its "
        "transaction (a lone caller never waits; 0: no gathering)")
    otel: bool = Field(
        default=False,
        description="FastAPI's OpenTelemetry instrumentation (traces, metrics and logs to the "
        "OpenTelemetry SDK you configure); off, no request pays for looking up providers")
    gc_freeze: bool = Field(
        default=True,
        description="after start-up (caches warmed), exempt the loaded heap from the garbage "
        "collector's full scans (gc.freeze): without it a worker paused 130-310 ms every few seconds")
    index_recheck_seconds: float = Field(
        default=1.0, ge=0, le=60,
        description="point lookup trusts its last check of the active boundary version this long "
        "(an activation by another worker is seen within this time; 0: check on every lookup)")
    echo_sql: bool = False

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not (value.startswith("sqlite:///") or value.startswith("postgresql")):
            raise ValueError(
                f"LEADGRID_DATABASE_URL={value!r}: expected sqlite:///PATH (SpatiaLite) "
                "or postgresql+psycopg://USER@HOST/DB (PostGIS)"
            )
        return value

    @property
    def backend(self) -> str:
        """``"spatialite"`` or ``"postgis"``."""
        return "spatialite" if self.database_url.startswith("sqlite") else "postgis"

    def resolved_secret(self) -> str:
        """The token signing key; a random one is generated once and kept beside the data."""
        if self.secret_key:
            return self.secret_key
        path = Path("var") / "secret.key"
        if not path.exists():
            import secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()
