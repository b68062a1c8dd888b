"""rrr's HTTP API: OpenAI-compatible chat completions with verified tool calls, plus inspection and admin.

``api.app.create_app(settings)`` builds the FastAPI app; ``rrr serve`` runs it. Routes (one router
per resource under ``api/routes``):

| route | key | what |
|---|---|---|
| ``POST /v1/chat/completions`` | inference | verify, reflect, retry, answer (JSON or SSE), record |
| ``GET /v1/models`` | inference | the alias ``rrr``, the base model, the adapters |
| ``POST /v1/episodes/{id}/feedback`` | inference (owner) | late verdict; may add the reference calls |
| ``GET /v1/episodes``, ``GET /v1/episodes/{id}`` | admin | filtered, cursor-paged listing; detail |
| ``GET /v1/stats`` | admin | success rates overall, by adapter, by day |
| ``GET /v1/training-runs``, ``GET /v1/training-runs/{id}`` | admin | the learner's runs, metrics, gate decisions |
| ``GET /v1/adapters``, ``POST /v1/adapters/{name}/activate``, ``POST /v1/adapters/rollback`` | admin | atomic flips |
| ``GET /health``, ``GET /metrics``, ``GET /docs``, ``GET /openapi.json`` | none | |

``api`` imports ``agent``, ``store`` and ``tools``, never ``learner`` or torch.
"""
