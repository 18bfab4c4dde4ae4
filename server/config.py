"""Server settings: environment variables (`ASTER_*`) with CLI flags that
mirror them, validated once at start-up."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = Annotated[int, Field(ge=0, le=65535)]


class LogFormat(StrEnum):
    """How log lines are written; `auto` is text on a terminal, else JSON."""

    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


class Mode(StrEnum):
    """Development (the default) or production, which refuses unsafe settings."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


AUTH_METHODS = ("api_key", "jwt")
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")


class Settings(BaseSettings):
    """Every knob of the server. Field `grpc_port` is `ASTER_GRPC_PORT`, and so on."""

    model_config = SettingsConfigDict(env_prefix="ASTER_", extra="ignore", frozen=True)

    grpc_host: str = "0.0.0.0"
    grpc_port: Port = 50051
    http_port: Port = 8080
    # The address the Envoy edge listens on.
    http_host: str = "0.0.0.0"
    metrics_port: Port = 9464
    # The metrics endpoint binds here; the edge serves it at /metrics.
    metrics_host: str = "127.0.0.1"
    envoy_admin_port: Port = 9901
    data_dir: Path = Path(".aster")
    database_url: str = ""
    redis_url: str = ""
    # The Redis bus keeps at least this many entries per stream (run, room,
    # workflow execution) and deletes a stream this long after its last one.
    bus_stream_maxlen: int = Field(1000, ge=1)
    bus_stream_ttl_s: int = Field(3600, ge=1)
    log_level: str = "info"
    log_format: LogFormat = LogFormat.AUTO
    mode: Mode = Mode.DEVELOPMENT
    # gRPC server reflection; unset means on in development, off in production.
    reflection: bool | None = None
    # Apply migrations at start-up (the embedded default). Off: the server
    # refuses a schema that is not exactly its own; run `aster db upgrade`.
    auto_migrate: bool = True
    shutdown_grace_s: float = Field(10.0, ge=0)
    # Seconds a stopping server keeps serving while its health says
    # NOT_SERVING; unset means 0 in development, 5 in production.
    shutdown_drain_s: float | None = Field(None, ge=0, le=300)
    workers: int = Field(1, ge=1, le=64)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Files named by an agent's `model.api_key.file` live here (default:
    # <data_dir>/secrets).
    secrets_dir: Path | None = None
    # Hosts the builtin `http_request` tool may call (comma-separated); empty
    # means the tool is off.
    egress_allow_hosts: str = ""
    # Limits of every run: model calls per run, tokens (in + out) per run,
    # wall time per run, characters of one input message.
    run_max_steps: int = Field(8, ge=1, le=100)
    run_max_tokens: int = Field(100_000, ge=1)
    run_timeout_s: float = Field(600.0, gt=0)
    max_input_chars: int = Field(100_000, ge=1)
    # A run's lease: renewed by its worker every third of this; a worker
    # silent for longer loses the run to another worker (as a new attempt).
    run_lease_s: float = Field(10.0, ge=1)
    # Agent turns of a room collaboration (RunRoom) whose max_turns is 0.
    room_max_turns: int = Field(10, ge=1, le=100)
    # A run whose worker died this many times ends FAILED (0 = no limit).
    run_max_attempts: int = Field(3, ge=0)
    # How often each worker looks for queued runs it can take.
    queue_poll_s: float = Field(0.5, gt=0)
    # How often each replica's scheduler starts due workflow schedule
    # firings, and how old a missed firing may be and still start (older
    # missed ones: only the latest starts).
    workflow_scheduler_interval_s: float = Field(0.5, gt=0, le=60)
    workflow_schedule_grace_s: float = Field(60.0, ge=0)
    # How long the events of a finished run or workflow execution stay
    # replayable (StreamRun, WatchExecution).
    event_retention_s: float = Field(86_400.0, gt=0)
    # The agent pool (per replica): most live agents, idle time before an
    # agent hibernates, how long a run waits for room before
    # RESOURCE_EXHAUSTED, and how long RemovePoolAgent waits for runs.
    pool_max_agents: int = Field(100, ge=1, le=100_000)
    pool_idle_s: float = Field(300.0, gt=0)
    pool_admission_timeout_s: float = Field(30.0, ge=0)
    pool_drain_timeout_s: float = Field(30.0, ge=0, le=50)
    # Working memory: the largest value (compact JSON bytes), and how often
    # expired entries are purged (they are invisible from their expiry on).
    working_memory_max_value_bytes: int = Field(65_536, ge=16, le=4 * 1024 * 1024)
    working_memory_purge_s: float = Field(300.0, gt=0)
    # Semantic memory: the embedder (`auto`: `local` if the `embed` extra is
    # installed, else `none`, which turns semantic memory off), the model and
    # endpoint of the `openai` embedder (its key: OPENAI_API_KEY), the default
    # similarity of ConsolidateMemory, and how many vectors the exact search
    # keeps in memory per replica.
    embedder: Literal["auto", "local", "openai", "none"] = "auto"
    embedder_openai_model: str = "text-embedding-3-small"
    embedder_openai_base_url: str = ""
    memory_consolidate_threshold: float = Field(0.9, gt=0, le=1)
    memory_cache_max_vectors: int = Field(2_000_000, ge=1000)
    # Authentication: `none`, `api_key`, `jwt` or `api_key,jwt`.
    auth_mode: str = "none"
    # JWT verification: the accepted algorithms (pinned), the HS256 secret,
    # or RS256/ES256 keys from a JWKS file or URL; the claims checked.
    jwt_algorithms: str = "HS256"
    jwt_secret: str = Field("", repr=False)
    jwt_jwks_file: Path | None = None
    jwt_jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_s: float = Field(30.0, ge=0, le=300)
    jwt_tenant_claim: str = "tenant"
    jwt_scope_claims: str = "scope,scp"
    # Requests per second and burst per tenant and per API key (on with auth).
    rate_limit_rps: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(100, ge=1)
    # Per-tenant quotas; 0 means unlimited.
    quota_max_agents: int = Field(10_000, ge=0)
    quota_max_concurrent_runs: int = Field(100, ge=0)
    quota_max_tokens_per_day: int = Field(0, ge=0)
    # Protocol limits of the gRPC server.
    max_concurrent_rpcs: int = Field(10_000, ge=1)
    max_unary_deadline_s: float = Field(60.0, gt=0)
    # Edge: allowed CORS origins (comma-separated, `*` for any), Envoy's
    # per-client-IP rate limit (0 = off), and its hardening limits.
    cors_origins: str = ""
    edge_rate_limit_rps: float = Field(0.0, ge=0)
    edge_max_concurrent_streams: int = Field(100, ge=1)
    edge_max_connections: int = Field(10_000, ge=1)
    edge_max_heap_bytes: int = Field(1024 * 1024 * 1024, ge=64 * 1024 * 1024)
    # Where `aster edge` sends traffic; defaults to this server's gRPC port.
    upstreams: str = ""

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return level

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// "
                f"(got {value.split('://', 1)[0]}://...)"
            )
        return value

    @field_validator("auth_mode")
    @classmethod
    def _known_auth_mode(cls, value: str) -> str:
        methods = [m.strip() for m in value.lower().split(",") if m.strip()]
        if methods == ["none"]:
            return "none"
        unknown = [m for m in methods if m not in AUTH_METHODS]
        if unknown or not methods:
            raise ValueError("must be none, api_key, jwt or api_key,jwt")
        return ",".join(sorted(set(methods)))

    @field_validator("jwt_algorithms")
    @classmethod
    def _pinned_algorithms(cls, value: str) -> str:
        algorithms = [a.strip().upper() for a in value.split(",") if a.strip()]
        unknown = [a for a in algorithms if a not in JWT_ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"must be a comma-separated subset of {', '.join(JWT_ALGORITHMS)}")
        return ",".join(algorithms)

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.mode is Mode.PRODUCTION and self.auth_mode == "none":
            raise ValueError(
                "ASTER_MODE=production refuses ASTER_AUTH_MODE=none; set api_key, jwt or "
                "api_key,jwt"
            )
        if "jwt" in self.auth_methods:
            algorithms = self.jwt_algorithm_list
            if "HS256" in algorithms and not self.jwt_secret:
                raise ValueError("ASTER_JWT_ALGORITHMS has HS256 but ASTER_JWT_SECRET is empty")
            if set(algorithms) - {"HS256"} and not (self.jwt_jwks_file or self.jwt_jwks_url):
                raise ValueError("RS256/ES256 need ASTER_JWT_JWKS_FILE or ASTER_JWT_JWKS_URL")
        return self

    @property
    def auth_methods(self) -> tuple[str, ...]:
        """The enabled authentication methods; empty when auth is off."""
        return () if self.auth_mode == "none" else tuple(self.auth_mode.split(","))

    @property
    def jwt_algorithm_list(self) -> list[str]:
        """The accepted JWT algorithms."""
        return self.jwt_algorithms.split(",")

    @property
    def reflection_enabled(self) -> bool:
        """Reflection, defaulting to on in development and off in production."""
        if self.reflection is not None:
            return self.reflection
        return self.mode is Mode.DEVELOPMENT

    @property
    def shutdown_drain_seconds(self) -> float:
        """The drain before a stop: long enough, in production, for a balancer
        that health-checks every 2 s (`aster edge`) to stop sending new calls."""
        if self.shutdown_drain_s is not None:
            return self.shutdown_drain_s
        return 5.0 if self.mode is Mode.PRODUCTION else 0.0

    @property
    def cors_origin_list(self) -> list[str]:
        """The allowed CORS origins."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        ports = {
            "grpc_port": self.grpc_port,
            "http_port": self.http_port,
            "metrics_port": self.metrics_port,
            "envoy_admin_port": self.envoy_admin_port,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port and port in seen:
                raise ValueError(f"{name} and {seen[port]} are both {port}")
            seen[port] = name
        return self

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'aster.db').resolve()}"

    @property
    def effective_secrets_dir(self) -> Path:
        """The secrets directory, defaulting to <data_dir>/secrets."""
        return self.secrets_dir or self.data_dir / "secrets"

    @property
    def storage_backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return "postgresql" if self.effective_database_url.startswith("postgresql") else "sqlite"

    @property
    def upstream_addresses(self) -> list[tuple[str, int]]:
        """The gRPC servers the edge balances across, as (host, port)."""
        if not self.upstreams:
            return [("127.0.0.1", self.grpc_port)]
        result = []
        for item in self.upstreams.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"ASTER_UPSTREAMS: {item!r} is not host:port")
            result.append((host, int(port)))
        return result
