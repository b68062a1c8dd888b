"""`rrr engine serve`: the local engine behind a vLLM-compatible HTTP server (docs/vllm.md §8).

`create_app(engine, ...)` builds the FastAPI app. `app` holds the routes and the server state,
`protocol` the request bodies and auth, `registry` the LoRA registry, `stream` the SSE frames,
`errors` vLLM's error contract and `metrics` the Prometheus series.
"""

from engines.server.app import EngineServer, ServeConfig, build_app, create_app

__all__ = ["EngineServer", "ServeConfig", "build_app", "create_app"]
