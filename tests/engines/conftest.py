"""Engine servers shared by the engine tests: `rrr engine serve` subprocesses, one of each kind per session.

* `engine_server`: the tiny tool model (tests/conftest.py `tiny_tool_model`) with `--enable-lora` and
  runtime LoRA updating on (set as " True ", to check vLLM's stripped, case-blind reading).
* `locked_engine_server`: the same model with runtime updating off ("0"), an API key from
  `VLLM_API_KEY` and the tool parser off: the server-side switches of the contract's 404/401/400 cases.

Both start together the first time a test asks for either, and stop at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ToolModel
from tests.engines.conformance.servers import ServerProcess, launch_engine_server, wait_started

BASE_NAME = "tiny-tool"
LOCKED_KEY = "conformance-key"
MAX_LORA_RANK = 16


@pytest.fixture(scope="session")
def engine_servers(
    tiny_tool_model: ToolModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Both servers, started side by side (model loading overlaps)."""
    logs = tmp_path_factory.mktemp("engine-serve")
    open_server = launch_engine_server(
        tiny_tool_model.path,
        logs,
        args=["--enable-lora", "--served-model-name", BASE_NAME, "--max-lora-rank", str(MAX_LORA_RANK)],
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": " True "},
    )
    locked = launch_engine_server(
        tiny_tool_model.path,
        logs,
        args=["--enable-lora", "--served-model-name", BASE_NAME, "--no-enable-auto-tool-choice"],
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "0", "VLLM_API_KEY": LOCKED_KEY},
    )
    wait_started(open_server, locked)
    yield open_server, locked
    open_server.stop()
    locked.stop()


@pytest.fixture(scope="session")
def engine_server(engine_servers: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return engine_servers[0]


@pytest.fixture(scope="session")
def locked_engine_server(engine_servers: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return engine_servers[1]


@pytest.fixture(scope="session")
def adapter_copy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapter-copies")
