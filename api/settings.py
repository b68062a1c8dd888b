"""The API's one settings object: ``RRR_*`` environment variables, optionally a YAML file.

Read once by the entry point (``rrr serve``) and passed to ``api.app.create_app``; nothing below
the entry point reads the environment. Sources, strongest first: keyword arguments, ``RRR_*``
variables, the YAML file named by ``RRR_CONFIG``, the defaults here. Lists (``RRR_API_KEYS``,
``RRR_ADMIN_KEYS``, ``RRR_ENGINE_URLS``, ``RRR_CORS_ORIGINS``) are comma-separated in the
environment and lists in YAML. This module does not validate keys against a bind address (the
app and the CLI do, see ``api.auth.check_bind``) and builds nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, check_tool_call_parser
from tools.verifiers.policy import VerifierPolicy

CONFIG_ENV = "RRR_CONFIG"

CommaList = Annotated[list[str], NoDecode]


def _default_data_dir() -> Path:
    return Path.home() / ".rrr"


class Settings(BaseSettings):
    """Everything ``rrr serve`` can be told. Each field is ``RRR_<NAME>`` in the environment.

    Engines: ``engine_urls`` (vLLM or ``rrr engine serve`` replicas) or ``model`` (a local model
    directory served in-process); with neither, ``rrr serve`` refuses to start.
    Auth (R13): ``api_keys`` are inference keys, ``admin_keys`` also open the inspection and admin
    routes. With no key at all, auth is off and only a loopback ``host`` is allowed.
    Limits (R10) are checked before any model call; a schema limit above the library's own cap
    (``tools.schema``) has no effect.
    """

    model_config = SettingsConfigDict(env_prefix="RRR_", extra="ignore", validate_default=True)

    # storage
    database_url: str | None = Field(
        default=None, repr=False, description="SQLAlchemy URL; default SQLite under data_dir."
    )
    data_dir: Path = Field(default_factory=_default_data_dir, description="Embedded database, spool files.")
    auto_migrate: bool | None = Field(
        default=None,
        description="Run schema migrations at startup; default: for SQLite files only (others: `rrr db upgrade`).",
    )
    spool_path: Path | None = Field(
        default=None,
        description="Episode journal and spool file (one per process); default data_dir/spool/episodes-<port>.jsonl.",
    )
    adapters_root: Path | None = Field(
        default=None, description="Published adapter folders (R16); default data_dir/adapters, as the learner's."
    )
    writer_max_queue: int = Field(default=10_000, ge=1)
    writer_batch_size: int = Field(default=200, ge=1)
    writer_journal_wait_s: float = Field(
        default=5.0,
        ge=0,
        description="Longest wait of an answer for its episode to be fsync'd to the journal (R5); past it the "
        "answer goes out anyway. 0: answers do not wait (a kill -9 may lose the episodes answered last).",
    )
    db_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait for a new PostgreSQL connection (libpq: whole seconds, >= 2)."
    )
    db_statement_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="Statement timeout (0: none); the client waits at most 2 s longer for any answer, then drops "
        "the connection (a stalled network or proxy).",
    )
    db_pool_timeout_s: float = Field(default=5.0, gt=0, description="Longest wait for a free pooled connection.")
    db_write_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait for one transaction of the episode writer; past it episodes are spooled and "
        "/health is degraded (R6).",
    )

    # engines
    engine_urls: CommaList = Field(default_factory=list, description="Engine replica URLs (with or without /v1).")
    engine_api_key: str | None = Field(default=None, repr=False, description="Bearer key the engines expect.")
    model: str | None = Field(default=None, description="Local model directory for the in-process engine.")
    base_model_name: str | None = Field(
        default=None,
        description="Public name of the base model; default: asked from the engines (or the model folder name).",
    )
    engine_timeout_s: float = Field(default=120.0, gt=0)
    engine_connect_timeout_s: float = Field(default=2.0, gt=0)
    engine_failure_threshold: int = Field(default=3, ge=1)
    engine_probe_interval_s: float = Field(default=1.0, gt=0)
    engine_startup_timeout_s: float = Field(
        default=60.0, ge=0, description="How long to wait for an engine at startup."
    )
    local_device: str | None = Field(
        default=None, description="torch device of the local engine (default: cuda if any)."
    )
    policy_ttl_s: float = Field(default=1.0, ge=0, description="How long the active adapter is cached.")
    tool_call_parser: str = Field(
        default=DEFAULT_TOOL_CALL_PARSER,
        description="The model's tool-call format, by vLLM's --tool-call-parser name (hermes, llama3_json, "
        "mistral, pythonic): the local engine parses with it and failed calls are quoted back in it. Give vLLM "
        "the same --tool-call-parser.",
    )

    # access
    api_keys: CommaList = Field(default_factory=list, repr=False)
    admin_keys: CommaList = Field(default_factory=list, repr=False)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    cors_origins: CommaList = Field(default_factory=list, description="CORS is off unless origins are listed.")
    docs: bool = Field(default=True, description="Serve /docs and /openapi.json.")

    # limits (R10)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_admin_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_messages: int = Field(default=512, ge=1)
    max_tools: int = Field(default=128, ge=1)
    max_schema_bytes: int = Field(default=64 * 1024, ge=64)
    max_schema_depth: int = Field(default=32, ge=2)
    max_json_depth: int = Field(default=64, ge=4)
    max_tokens_cap: int = Field(default=8192, ge=1)
    max_client_retries: int = Field(default=1, ge=0, description="Largest rrr.max_retries a client may ask for.")
    max_verifier_cost: int = Field(
        default=32,
        ge=1,
        description="Largest cost of a client's rrr.verifier: its leaves times the answers it may judge.",
    )
    verifiers: dict[str, Any] | None = Field(
        default=None,
        description="The verifier policy: default, per-tool verifiers, webhooks, plugins, client (see README).",
    )

    # the reflect/retry loop
    max_calls: int = Field(default=3, ge=1, description="Model calls per request (answer, reflection, retry).")
    deadline_s: float = Field(default=60.0, gt=0, description="One deadline for all calls of a request.")
    reflection_with_reason: bool = False
    reflection_max_tokens: int = Field(default=256, ge=1)
    verify_budget_s: float = Field(
        default=30.0, gt=0, description="Time for all verification of one request, off the event loop."
    )
    verify_regex_budget_s: float = Field(
        default=1.0, gt=0, description="Time for all JSON-Schema pattern searches of one request."
    )
    verify_workers: int = Field(default=8, ge=1, description="Threads that run verification, shared by all requests.")

    # streaming and shutdown
    stream_start_s: float = Field(
        default=1.0, ge=0, description="A stream whose loop takes longer starts its SSE response (200) then."
    )
    stream_keepalive_s: float = Field(default=10.0, gt=0, description="SSE comment interval while the loop runs.")
    shutdown_drain_s: float = Field(default=30.0, ge=0, description="How long shutdown waits for in-flight requests.")
    record_rejected: bool = Field(default=True, description="Store rejected chat requests as `rejected` episodes.")

    @field_validator("api_keys", "admin_keys", "engine_urls", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return [str(part).strip() for part in value if str(part).strip()]
        return value

    def verifier_policy(self) -> VerifierPolicy:
        """The parsed verifier policy; ``PolicyError`` names the file (or variable) and the wrong key."""
        where = f"{os.environ[CONFIG_ENV]}: verifiers" if os.environ.get(CONFIG_ENV) else "RRR_VERIFIERS"
        return VerifierPolicy.parse(self.verifiers, where=where)

    @model_validator(mode="after")
    def _check_policy(self) -> Settings:
        self.verifier_policy()  # a bad policy fails at startup, naming the key
        return self

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, value: str) -> str:
        return check_tool_call_parser(value)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.engine_urls and self.model:
            raise ValueError("set either engine_urls (RRR_ENGINE_URLS) or model (RRR_MODEL), not both")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return "sqlite:///" + str(self.data_dir / "rrr.db")

    def resolved_adapters_root(self) -> Path:
        return self.adapters_root or self.data_dir / "adapters"

    def resolved_spool_path(self) -> Path:
        return self.spool_path or self.data_dir / "spool" / f"episodes-{self.port}.jsonl"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            if not Path(config_file).is_file():
                raise ValueError(f"{CONFIG_ENV} names {config_file!r}, which is not a readable file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)
