"""Fixtures for the API tests: rrr served by uvicorn on a loopback port, in front of a scripted upstream.

Everything goes through real HTTP: clients use the real `openai` SDK (or httpx for raw frames), rrr
talks to `tests.support.upstream.ScriptedUpstream` through `VLLMEngine` in an `EnginePool`, and
episodes land in a real database (SQLite in a temp dir; PostgreSQL too when RRR_TEST_DATABASE_URL is
set, for the tests that take the `backend` parameter).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.settings import Settings
from api.state import AppState
from tests.store.conftest import backend, migrated_url, pg_module_url  # noqa: F401  (shared DB fixtures)
from tests.support.db import backends, migrated_database
from tests.support.upstream import Script, ScriptedUpstream, tool_call

INFER = "sk-infer-test-0123456789abcdef"
OTHER = "sk-infer-other-fedcba9876543210"
ADMIN = "sk-admin-test-00112233445566778899"

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 100}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
GOOD = tool_call("get_weather", {"city": "Paris"})
BAD = tool_call("get_weather", {"city": 7})


class LiveServer:
    """uvicorn serving ``app`` in a thread on a free loopback port (lifespan included)."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the rrr test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


class KeptClient(httpx.Client):
    """An httpx client that survives ``with`` blocks (creating one costs ~0.1 s); ``Rrr.close`` ends it."""

    def __enter__(self) -> KeptClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass
class Rrr:
    """A running rrr and its upstream, with (cached) clients for each key."""

    url: str
    upstream: ScriptedUpstream
    app: FastAPI
    settings: Settings
    _http: dict[str | None, KeptClient] = field(default_factory=dict)
    _sdk: dict[str, openai.OpenAI] = field(default_factory=dict)

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.rrr
        return state

    def client(self, key: str = INFER) -> openai.OpenAI:
        if key not in self._sdk:
            self._sdk[key] = openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30)
        return self._sdk[key]

    def http(self, key: str | None = ADMIN) -> httpx.Client:
        if key not in self._http:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._http[key] = KeptClient(base_url=self.url, headers=headers, timeout=30)
        return self._http[key]

    def close(self) -> None:
        for client in self._http.values():
            client.close()
        for sdk in self._sdk.values():
            sdk.close()

    def chat(self, key: str = INFER, **body: Any) -> httpx.Response:
        """A raw chat request (defaults: the weather task with TOOLS)."""
        payload = {"model": "rrr", "messages": MESSAGES, "tools": TOOLS, **body}
        with self.http(key) as http:
            return http.post("/v1/chat/completions", json=payload)

    def flush(self) -> None:
        assert self.state.writer.flush(15), "the episode writer did not flush in time"

    def episode(self, episode_id: str) -> dict[str, Any]:
        self.flush()
        with self.http(ADMIN) as http:
            response = http.get(f"/v1/episodes/{episode_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def reset(self, script: Script) -> None:
        """A new script on the same upstream; request log and counters cleared."""
        with self.upstream._lock:
            self.upstream.script = script
            self.upstream.requests.clear()
            self.upstream.counts.clear()


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp,
        api_keys=[INFER, OTHER],
        admin_keys=[ADMIN],
        base_model_name="base",
        deadline_s=10.0,
        engine_failure_threshold=1000,
        stream_start_s=1.0,
        stream_keepalive_s=0.1,
        shutdown_drain_s=5.0,
    )
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running(
    tmp: Path, script: Script | None = None, *, engine_url: str | None = None, lora: bool = False, **overrides: Any
) -> Iterator[Rrr]:
    """rrr on a fresh upstream (or ``engine_url``) with ``make_settings(tmp, **overrides)``."""
    with ScriptedUpstream(script or Script(answer=[GOOD]), lora=lora) as upstream:
        settings = make_settings(tmp, engine_urls=[engine_url or upstream.url], **overrides)
        app = create_app(settings)
        with LiveServer(app) as server:
            rrr = Rrr(url=f"http://127.0.0.1:{server.port}", upstream=upstream, app=app, settings=settings)
            try:
                yield rrr
            finally:
                rrr.close()


StartRrr = Callable[..., Rrr]


@pytest.fixture(scope="module")
def shared_rrr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rrr]:
    """One rrr per module on the embedded SQLite default (migrated at startup); tests ``reset`` its script."""
    with running(tmp_path_factory.mktemp("rrr")) as rrr:
        yield rrr


@pytest.fixture
def rrr(shared_rrr: Rrr) -> Rrr:
    shared_rrr.reset(Script(answer=[GOOD]))
    return shared_rrr


@pytest.fixture
def start_rrr(tmp_path: Path) -> Iterator[StartRrr]:
    """Start rrr with custom settings/script inside the test; stopped at the end."""
    stack: list[Any] = []

    def start(script: Script | None = None, **kw: Any) -> Rrr:
        manager = running(tmp_path / f"rrr{len(stack)}", script, **kw)
        instance = manager.__enter__()
        stack.append(manager)
        return instance

    yield start
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


@pytest.fixture(scope="module", params=backends())
def module_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One migrated database per module and backend, for tests that only read what they seeded."""
    with migrated_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def db_rrr(tmp_path: Path, migrated_url: str) -> Iterator[Rrr]:  # noqa: F811
    """rrr on a freshly migrated database of each backend (SQLite, and PostgreSQL when configured)."""
    with running(tmp_path, database_url=migrated_url, lora=True) as rrr:
        yield rrr
