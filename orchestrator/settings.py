"""Settings: ``ORCHESTRATOR_*`` environment variables, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", extra="ignore", validate_default=True)

    #: Where the embedded default keeps its SQLite database and telemetry files.
    data_dir: Path = Path(".orchestrator")
    #: ``postgresql://user:password@host/db`` to share one PostgreSQL between workers;
    #: unset, the embedded SQLite database in ``data_dir`` is used. Never logged.
    database_url: SecretStr | None = None
    #: PostgreSQL connection pool size per process; concurrency + 4 when unset.
    pg_pool_size: int | None = Field(default=None, ge=1, le=500)
    #: Send NOTIFY on every enqueue so idle workers wake at once (see README: Performance).
    pg_notify: bool = True
    #: Jobs one worker runs at once.
    concurrency: int = Field(default=4, ge=1, le=256)
    #: Modules of one job that run at once (a job's own option may lower it).
    module_concurrency: int = Field(default=8, ge=1, le=64)
    lease_seconds: float = Field(default=30.0, gt=0.5, le=3600)
    #: Lease renewal interval; a third of the lease when unset.
    heartbeat_seconds: float | None = Field(default=None, gt=0)
    cancel_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    poll_seconds: float = Field(default=1.0, gt=0, le=60)
    reap_seconds: float = Field(default=5.0, gt=0, le=3600)
    max_attempts: int = Field(default=3, ge=1, le=100)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    #: Load third-party modules from the ``orchestrator.modules`` entry-point group.
    load_entry_points: bool = True
    #: Bearer token the HTTP API requires when set (compared in constant time). Never logged.
    api_token: SecretStr | None = None
    #: Largest request body the HTTP API accepts (413 beyond).
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: Deliver webhooks from this process (worker and serve).
    webhooks: bool = True
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_seconds: float = Field(default=1.0, gt=0, le=3600)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: Allow webhook URLs that resolve to loopback or private addresses.
    webhook_allow_private: bool = False
    #: Apply schema migrations when a worker or server starts.
    auto_migrate: bool = True

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if (
            value is not None
            and value.get_secret_value()
            and not value.get_secret_value().startswith(("postgresql://", "postgres://"))
        ):
            raise ValueError("must be a postgresql:// URL (leave it unset for the embedded SQLite database)")
        return value or None

    @property
    def database_path(self) -> Path:
        return self.data_dir / "orchestrator.db"

    @property
    def telemetry_dir(self) -> Path:
        return self.data_dir / "telemetry"
