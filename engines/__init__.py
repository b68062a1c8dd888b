"""Engines behind one interface (`base.Engine`): vLLM over HTTP, the in-process local engine, and the
vLLM-compatible server over the local engine.

Importing this package is cheap: the engine classes load on first attribute access, and the local
engine imports torch only when it loads a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engines.base import (
    AdapterError,
    ChatRequest,
    ChatResult,
    Engine,
    EngineError,
    EngineProtocolError,
    EngineRequestError,
    EngineTimeout,
    EngineUnavailable,
)

if TYPE_CHECKING:
    from engines.local import LocalEngine
    from engines.vllm import VLLMEngine

__all__ = [
    "AdapterError",
    "ChatRequest",
    "ChatResult",
    "Engine",
    "EngineError",
    "EngineProtocolError",
    "EngineRequestError",
    "EngineTimeout",
    "EngineUnavailable",
    "LocalEngine",
    "VLLMEngine",
]


def __getattr__(name: str) -> Any:
    if name == "LocalEngine":
        from engines.local import LocalEngine

        return LocalEngine
    if name == "VLLMEngine":
        from engines.vllm import VLLMEngine

        return VLLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
