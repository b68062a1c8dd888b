"""Engines behind one interface (`base.Engine`): vLLM over HTTP, the in-process local engine, and the
vLLM-compatible server over the local engine.

Importing this package is cheap: callers import `engines.vllm.VLLMEngine` or `engines.local.LocalEngine`
themselves, and the local engine imports torch only when it loads a model.
"""

from __future__ import annotations

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
]
