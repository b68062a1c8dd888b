"""The target of the conformance suite (docs/vllm.md §8): `rrr engine serve` by default, or any server.

By default the suite starts `rrr engine serve` on the tiny tool model (tests/engines/conftest.py) and
checks it. With `RRR_VLLM_URL=http://host:port` it checks that server instead, e.g. a real vLLM
started with runtime LoRA updating, `--enable-lora` and the hermes tool parser:

* `RRR_VLLM_API_KEY`: the server's `--api-key`, if any.
* `RRR_VLLM_ADAPTER_DIR`: a servable PEFT adapter, as an absolute path on the server's host
  (adapter tests are skipped without it).
* `RRR_VLLM_SHARED_FS=1`: directories written here under the temp dir are visible to the server at
  the same paths (needed for the broken-adapter checks; a server on this machine qualifies).

Checks that need the scripted tool model or server-side switches (runtime updating off, `--api-key`,
tool parser off) run only against the server started here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ToolModel
from tests.engines.conformance.target import EXTERNAL_URL, Target


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    if EXTERNAL_URL:
        adapter = os.environ.get("RRR_VLLM_ADAPTER_DIR") or None
        local = Path(adapter) if adapter and Path(adapter, "adapter_config.json").is_file() else None
        return Target(
            url=EXTERNAL_URL,
            api_key=os.environ.get("RRR_VLLM_API_KEY") or None,
            adapter_dir=adapter,
            local_adapter=local,
            shared_fs=os.environ.get("RRR_VLLM_SHARED_FS") == "1",
            tool_model=None,
        )
    server = request.getfixturevalue("engine_server")
    adapter_dir: Path = request.getfixturevalue("tiny_adapter_dir")
    return Target(
        url=server.url,
        api_key=None,
        adapter_dir=str(adapter_dir),
        local_adapter=adapter_dir,
        shared_fs=True,
        tool_model=request.getfixturevalue("tiny_tool_model"),
    )


@pytest.fixture()
def http(target: Target) -> Iterator[httpx.Client]:
    with target.http() as client:
        yield client


@pytest.fixture()
def adapter(target: Target) -> str:
    if target.adapter_dir is None:
        pytest.skip("no servable adapter for this server (set RRR_VLLM_ADAPTER_DIR)")
    return target.adapter_dir


@pytest.fixture()
def scratch(target: Target, tmp_path: Path) -> Path:
    """A directory the server can read at the same path."""
    if not target.shared_fs or target.local_adapter is None:
        pytest.skip("the server cannot see this machine's files (set RRR_VLLM_SHARED_FS=1 and RRR_VLLM_ADAPTER_DIR)")
    return tmp_path


@pytest.fixture()
def tool_model(target: Target) -> ToolModel:
    if target.tool_model is None:
        pytest.skip("needs the scripted tool model of the server this suite starts")
    return target.tool_model


@pytest.fixture()
def names(http: httpx.Client) -> Iterator[Callable[[str], str]]:
    """Unique adapter names; whatever is still registered under them is unloaded afterwards."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for name in made:
        http.post("/v1/unload_lora_adapter", json={"lora_name": name})
