"""Settings: ``ORCHESTRATOR_*`` environment variables, overridable by CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.modules.budget import parse_module_seconds
from orchestrator.modules.ignore import InvalidPattern, check_patterns

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
    #: PostgreSQL: how long a statement waits for a lock another session holds (a row
    #: locked by a forgotten psql session), instead of as long as it is held.
    pg_lock_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
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
    #: A finished job's trace whose export is still unconfirmed this long after it ended
    #: (and whose emitting process shows no progress for as long) is rebuilt from the store.
    trace_grace_seconds: float = Field(default=60.0, gt=0, le=86_400)
    #: Seconds between the passes of each worker's trace reconciler.
    reconcile_seconds: float = Field(default=15.0, gt=0, le=3600)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    #: A module still running this long after its timeout or its job's cancellation was
    #: delivered (it ignores cancellation) is abandoned: its job goes on without it.
    module_abandon_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: Abandoned modules still running at which a worker stops claiming and stops (its
    #: supervisor starts a fresh process): each keeps its memory, and maybe a core.
    max_abandoned_modules: int = Field(default=8, ge=1, le=10_000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    #: Load third-party modules from the ``orchestrator.modules`` entry-point group.
    load_entry_points: bool = True
    #: Directories (``os.pathsep``-separated, absolute) that jobs created through the HTTP
    #: API must resolve inside; none: the API creates no jobs. The CLI is not confined.
    source_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    #: Bearer token the HTTP API requires when set (compared in constant time). Never logged.
    #: Unset: no authentication, which ``serve`` allows on loopback only (with a warning).
    api_token: SecretStr | None = None
    #: Serve without a token on a non-loopback address anyway (loud, explicit opt-out).
    api_insecure_no_auth: bool = False
    #: Host header values the API answers (comma-separated; ``*`` any, ``*.example.com``
    #: subdomains). Unset: localhost, 127.0.0.1, ::1 and the bind address.
    api_allowed_hosts: Annotated[tuple[str, ...] | None, NoDecode] = None
    #: Put /docs, /redoc and /openapi.json behind the token too.
    api_protect_docs: bool = False
    #: Largest request body the HTTP API accepts (413 beyond).
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: Jobs waiting in the queue beyond which the API refuses new ones (503, Retry-After).
    max_queued_jobs: int = Field(default=10_000, ge=1, le=10_000_000)
    #: Jobs one client address may create per minute (429, Retry-After beyond); 0: no limit.
    api_create_rate_per_minute: int = Field(default=0, ge=0, le=1_000_000)
    #: A client must send a complete request head within this time (slow-header clients).
    api_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: A client must send its whole request body within this time (408 beyond).
    api_body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: An idle keep-alive connection is closed after this time.
    api_keep_alive_seconds: int = Field(default=5, ge=1, le=300)
    #: Open connections (and requests in progress) beyond which the server answers 503.
    api_max_connections: int = Field(default=1000, ge=1, le=100_000)
    #: Deliver webhooks from this process (worker and serve).
    webhooks: bool = True
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_seconds: float = Field(default=1.0, gt=0, le=3600)
    #: Hard deadline of one delivery attempt: resolving, connecting, sending, reading.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: Allow webhook URLs that resolve to loopback or private addresses.
    webhook_allow_private: bool = False
    #: Host names (comma-separated, as webhook URLs name them) whose webhooks may resolve
    #: to loopback or private addresses; every other target must be public.
    webhook_private_hosts: Annotated[frozenset[str], NoDecode] = frozenset()
    #: Delivery attempts one dispatcher runs at once, and at most per subscription.
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)
    webhook_concurrency_per_subscription: int = Field(default=4, ge=1, le=256)
    #: Apply schema migrations when a worker or server starts.
    auto_migrate: bool = True
    #: Worker processes for CPU-bound module work (parsing, pattern scans), shared by the
    #: jobs of this process; unset: one per core this process may use; 0: no processes.
    analysis_processes: int | None = Field(default=None, ge=0, le=256)
    #: Gitignore-style patterns the walk leaves out, comma-separated; replaces the
    #: built-in defaults (VCS folders, virtualenvs, node_modules, build outputs); "": none.
    analysis_ignore: Annotated[list[str] | None, NoDecode] = None
    #: Honour the project's .gitignore files (a job may say otherwise).
    analysis_gitignore: bool = True
    #: Files larger than this are counted but their content is not scanned.
    analysis_max_file_bytes: int = Field(default=5_000_000, ge=1024, le=1 << 32)
    #: Trees up to this many bytes (and 1,000 files) are scanned in a thread of the job's
    #: process instead of the worker processes (cheaper to start); 0: always the processes.
    analysis_inline_bytes: int = Field(default=2_000_000, ge=0)
    #: Module timeouts, ``module=seconds,...`` (``*`` for every module), for a project of
    #: the reference size below; scaled to the tree analysed.
    module_timeouts: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    #: Expected module runtimes (exceeding one is an overrun), as module_timeouts.
    module_expected: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    #: The reference project size the module budgets are for; budgets scale with
    #: max(1, files / reference_files, bytes / reference_bytes). 0 leaves a dimension out.
    budget_reference_files: int = Field(default=1_000, ge=0)
    budget_reference_bytes: int = Field(default=25_000_000, ge=0)

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

    @field_validator("source_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(os.pathsep) if part.strip())
        return value

    @field_validator("source_roots")
    @classmethod
    def _absolute_roots(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        # (a name that is not UTF-8 shown by its bytes: pydantic cannot carry a lone surrogate)
        relative = [os.fsencode(p).decode("utf-8", "backslashreplace") for p in value if not p.is_absolute()]
        if relative:
            raise ValueError(f"must be absolute paths (got {', '.join(relative)})")
        return value

    @field_validator("api_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
            if not hosts:
                raise ValueError("must name at least one host (or *), or be unset")
            return hosts
        return value

    @field_validator("webhook_private_hosts", mode="before")
    @classmethod
    def _split_private_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            # As webhooks.targets.host_key compares them: lower case, no dot at the end.
            return frozenset(h.strip().strip("[]").lower().rstrip(".") for h in value.split(",") if h.strip())
        return value

    @field_validator("api_token")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if not token.strip():
            raise ValueError("is empty: set a long random value, or unset it to turn authentication off")
        if not all(33 <= ord(c) <= 126 for c in token):
            raise ValueError("must be printable ASCII without spaces (it is sent in an HTTP header)")
        return value

    @field_validator("module_timeouts", "module_expected", mode="before")
    @classmethod
    def _module_seconds(cls, value: object) -> object:
        if isinstance(value, dict):  # given in code: the same checks as from the environment
            value = ",".join(f"{name}={seconds}" for name, seconds in value.items())
        return parse_module_seconds(value) if isinstance(value, str) else value

    @field_validator("analysis_ignore", mode="before")
    @classmethod
    def _patterns(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            try:
                return check_patterns(str(part) for part in value)
            except InvalidPattern as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def database_path(self) -> Path:
        return self.data_dir / "orchestrator.db"

    @property
    def telemetry_dir(self) -> Path:
        return self.data_dir / "telemetry"
