"""What the conformance suite knows about the server it checks (see conftest.py for how it is chosen)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ToolModel

EXTERNAL_URL = os.environ.get("RRR_VLLM_URL", "").rstrip("/").removesuffix("/v1")
needs_local = pytest.mark.skipif(
    bool(EXTERNAL_URL),
    reason="needs the scripted tool model or server-side "
    "switches of the server this suite starts (RRR_VLLM_URL is set)",
)


@dataclass
class Target:
    """The server under test and what is known about it."""

    url: str
    api_key: str | None
    adapter_dir: str | None
    """A servable adapter, as a path on the server's host."""
    local_adapter: Path | None
    """A servable adapter readable here, to derive broken ones from."""
    shared_fs: bool
    tool_model: ToolModel | None
    """Set when the server runs the tiny tool model (known answers for known prompts)."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def sdk(self, timeout: float = 120.0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key or "EMPTY", max_retries=0, timeout=timeout)

    def base_model(self) -> str:
        with self.http() as client:
            cards = client.get("/v1/models").json()["data"]
        return str(next(card["id"] for card in cards if card["parent"] is None))
