"""The learner's one settings object: `RRR_*` environment variables, optionally a YAML file.

Read once by the learner's entry points (`rrr learn run|schedule`, the learner container) and
turned into a `learner.config.LearnerConfig` by `learner_config`; nothing below the entry point
reads the environment. Sources, strongest first: keyword arguments (the CLI's flags), `RRR_*`
variables, the YAML file named by `RRR_CONFIG`, then the defaults of the config dataclasses: a
setting left unset here is not passed on, so each default lives in one place
(`learner.config`). `RRR_ENGINE_URLS` is comma-separated in the environment, a list in YAML.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from learner.config import GateConfig, LearnerConfig, TrainConfig

CONFIG_ENV = "RRR_CONFIG"
CommaList = Annotated[list[str], NoDecode]


class LearnerSettings(BaseSettings):
    """Everything a learner process can be told. Each field is `RRR_<NAME>` in the environment;
    None means "the config's default" (see `learner.config` for what each one does)."""

    model_config = SettingsConfigDict(env_prefix="RRR_", extra="ignore")

    # where things are
    database_url: str | None = Field(
        default=None, repr=False, description="SQLAlchemy URL; default SQLite under data_dir."
    )
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".rrr", description="Default home of the rest.")
    engine_urls: CommaList = Field(
        default_factory=list, description="The serving engines (vLLM or `rrr engine serve`)."
    )
    engine_api_key: str | None = Field(default=None, repr=False, description="Bearer key of the engines, if any.")
    adapters_root: Path | None = Field(
        default=None, description="Published adapter folders; default data_dir/adapters."
    )
    model: str | None = Field(default=None, description="The base model folder the engines serve.")
    base_model_name: str | None = Field(default=None, description="The engines' served base name.")
    learner_work_dir: Path | None = Field(default=None, description="Training outputs; default data_dir/learner.")
    # when and what to train
    learn_min_failures: int | None = Field(default=None, description="K: new trainable failures before a run.")
    learn_interval_s: float | None = Field(default=None, description="Seconds between scheduled cycles.")
    dataset_limit: int | None = None
    max_client_share: float | None = None
    heldout_fraction: float | None = None
    regression_limit: int | None = None
    max_lora_rank: int | None = None
    adapter_drain_s: float | None = None
    train_config: Path | None = Field(default=None, description="JSON file of TrainConfig fields.")
    train_launcher: str | None = Field(default=None, description="Command in place of `python` for training.")
    tool_call_parser: str | None = Field(
        default=None, description="The policy's tool-call format (vLLM's --tool-call-parser name); default hermes."
    )
    # the gate
    gate_margin: float | None = None
    gate_tolerance: float | None = None
    gate_min_items: int | None = None

    @field_validator("engine_urls", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return [part.strip() for item in value for part in str(item).split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get(CONFIG_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / 'rrr.db'}"

    def learner_config(self) -> LearnerConfig:
        """The `LearnerConfig` these settings describe; ValueError names what to change."""
        if not self.model:
            raise ValueError("no base model: give --model DIR (or set RRR_MODEL), the folder the engines serve")
        chosen = {
            "min_new_failures": self.learn_min_failures,
            "interval_s": self.learn_interval_s,
            "dataset_limit": self.dataset_limit,
            "max_client_share": self.max_client_share,
            "heldout_fraction": self.heldout_fraction,
            "regression_limit": self.regression_limit,
            "max_lora_rank": self.max_lora_rank,
            "drain_s": self.adapter_drain_s,
            "tool_call_parser": self.tool_call_parser,
        }
        values: dict[str, Any] = {k: v for k, v in chosen.items() if v is not None}
        gate: dict[str, Any] = {
            "margin": self.gate_margin,
            "tolerance": self.gate_tolerance,
            "min_items": self.gate_min_items,
        }
        rank = self.max_lora_rank if self.max_lora_rank is not None else _default("max_lora_rank")
        return LearnerConfig(
            adapters_root=str(self.adapters_root or self.data_dir / "adapters"),
            model_path=self.model,
            engine_urls=list(self.engine_urls),
            database_url=self.resolved_database_url(),
            work_dir=str(self.learner_work_dir or self.data_dir / "learner"),
            base_model_name=self.base_model_name,
            engine_api_key=self.engine_api_key,
            gate=GateConfig(**{k: v for k, v in gate.items() if v is not None}),
            train=self._train(rank),
            train_launcher=tuple(shlex.split(self.train_launcher or "")),
            **values,
        )

    def _train(self, max_lora_rank: int) -> TrainConfig | None:
        if self.train_config is None:
            return None
        try:
            data = json.loads(self.train_config.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read the training config {self.train_config}: {exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"the training config {self.train_config} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"the training config {self.train_config} must be a JSON object of TrainConfig fields")
        # The engines' rank bounds what can be served: it wins over the file's.
        return TrainConfig.from_dict({**data, "max_lora_rank": max_lora_rank})


def _default(name: str) -> Any:
    """A LearnerConfig field's default (the one place defaults live)."""
    return next(f.default for f in dataclasses.fields(LearnerConfig) if f.name == name)
