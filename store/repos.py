"""The store's repository functions in one namespace: ``from store import repos``.

Callers (the writer, the API, the learner, the CLI) import from here; the code lives in
``store.episodes`` (record, get, list, feedback), ``store.stats`` (success rates),
``store.registry`` (adapters) and ``store.runs`` (training runs, leases). Every function takes a
``Session`` and never commits: the caller owns the unit of work (``with factory.begin() as s:``).
"""

from __future__ import annotations

from store.episodes import (
    ANSWERED_STATUSES,
    InvalidCursor,
    Page,
    decode_cursor,
    encode_cursor,
    get_episode,
    list_episodes,
    mark_episodes_consumed,
    record_episodes,
    set_feedback,
)
from store.registry import (
    AdapterNotFound,
    activate_adapter,
    create_adapter,
    get_active_adapter,
    get_adapter,
    list_adapters,
    next_adapter_version,
    rollback_adapter,
    rollback_target,
    set_adapter_status,
)
from store.runs import (
    TERMINAL_RUN_STATUSES,
    UNFINISHED_RUN_STATUSES,
    RunNotFound,
    acquire_lease,
    append_run_metrics,
    create_training_run,
    get_lease,
    get_training_run,
    heartbeat_run,
    list_training_runs,
    release_lease,
    renew_lease,
    set_gate_result,
    unfinished_runs,
    update_training_run,
)
from store.stats import EpisodeStats, StatusCounts, episode_stats

__all__ = [
    "ANSWERED_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "UNFINISHED_RUN_STATUSES",
    "AdapterNotFound",
    "EpisodeStats",
    "InvalidCursor",
    "Page",
    "RunNotFound",
    "StatusCounts",
    "acquire_lease",
    "activate_adapter",
    "append_run_metrics",
    "create_adapter",
    "create_training_run",
    "decode_cursor",
    "encode_cursor",
    "episode_stats",
    "get_active_adapter",
    "get_adapter",
    "get_episode",
    "get_lease",
    "get_training_run",
    "heartbeat_run",
    "list_adapters",
    "list_episodes",
    "list_training_runs",
    "mark_episodes_consumed",
    "next_adapter_version",
    "record_episodes",
    "release_lease",
    "renew_lease",
    "rollback_adapter",
    "rollback_target",
    "set_adapter_status",
    "set_feedback",
    "set_gate_result",
    "unfinished_runs",
    "update_training_run",
]
