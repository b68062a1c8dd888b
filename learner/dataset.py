"""The failure dataset: stored episodes the model failed, turned into GRPO rows (docs/design.md, "The learning loop" 1).

Who calls it: the learner's cycle (`build_failure_dataset` before training; the gate reads the
held-out and regression splits). The rows it makes are encoded for TRL and written to disk by
`learner.rows`.

What goes in (R20: traffic cannot silently steer the learner):
* trainable episodes whose FIRST attempt failed (status `failed` or `retry_ok`), with a verifier
  the learner can re-run offline (`tools.verify.is_rerunnable`). An episode that failed only by
  client feedback counts once the feedback supplied expected calls: its verifier becomes
  "the stored spec AND reference" against those calls. A failed episode whose client said ok=True
  is left out (the client contradicts the verifier);
* never evaluation traffic (`purpose = eval`, what `rrr eval run` sends): neither a training row
  nor a regression item, so a test set cannot leak into training or into the gate;
* not consumed by a promoted training run (a run that was rejected gives its episodes back);
* at most `max_client_share` of the batch from any one client key (episodes without a key count
  as one client). A single-tenant deployment sets `max_client_share=1.0`;
* a deterministic train / held-out split by a hash of the episode id (stable as the store grows);
* a regression set of past `first_ok` successes with re-runnable verifiers, never drawn from the
  batch, under the same client cap.

A row's `prompt_messages` are built with `agent.prompts` exactly as the serving loop builds the
reflection request, so `learner.rows.render_rows` (the tokenizer's own chat template with
`tools=`) produces byte-for-byte the prompt `LocalEngine.render_prompt` (and vLLM's chat
endpoint) renders.

What it deliberately does not do: write to the store (marking episodes consumed is the cycle's
job after promotion), mine new failures (`rrr learn mine`), encode rows for TRL, or import torch.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, aliased, selectinload

from agent import prompts
from learner.rows import FailureRow
from store.models import Attempt, Episode, TrainingRun
from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER
from tools.verify import VerifierSpec, is_rerunnable

log = logging.getLogger(__name__)

FAILED_FIRST_STATUSES = ("failed", "retry_ok")


@dataclass
class FailureDataset:
    """The batch (train + held-out failures) and the gate's regression set of past successes."""

    train: list[FailureRow] = field(default_factory=list)
    heldout: list[FailureRow] = field(default_factory=list)
    regression: list[FailureRow] = field(default_factory=list)
    episode_ids: list[str] = field(default_factory=list)
    """Ids of every failure in the batch (train and held-out): what a promoted run consumes."""

    def summary(self) -> dict[str, int]:
        return {"train": len(self.train), "heldout": len(self.heldout), "regression": len(self.regression)}


# --- selection -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureCandidate:
    """An episode that may enter a batch: its id, client key and creation time."""

    id: str
    client: str | None
    created_at: Any
    adapter: str | None = None
    """The adapter that served the episode (None: the base model)."""


def build_failure_dataset(
    session: Session,
    *,
    limit: int,
    max_client_share: float = 0.25,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    exclude_consumed: bool = True,
    regression_limit: int | None = None,
    with_reason: bool = False,
    served_by: str | bool | None = False,
    replay_share: float = 0.25,
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER,
) -> FailureDataset:
    """Select up to `limit` failures (newest first within each client's quota) and split them.

    `heldout_fraction` of the batch (by id hash, seeded) is held out for the gate.
    `regression_limit` (default `limit`) caps the regression set. `with_reason` appends the
    verifier's reason to the reflection request, matching a serving loop configured with
    `reflection_with_reason`; `tool_call_parser` quotes the failed calls in the policy's format, as
    that loop's `LoopConfig.tool_call_parser` does. `served_by` (an adapter name, or None for the base
    model; False: any policy) keeps the batch to failures collected under that policy plus at most `replay_share` of
    it from earlier, still unsolved failures of other policies (`served_by_first`): a warm-started
    cycle learns from the mistakes of the policy it continues. Reads only; the caller owns the session.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if not 0 < max_client_share <= 1:
        raise ValueError(f"max_client_share must be in (0, 1], got {max_client_share} (1.0 disables the cap)")
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if not 0 <= replay_share <= 1:
        raise ValueError(f"replay_share must be in [0, 1], got {replay_share}")
    failures = failure_candidates(session, exclude_consumed=exclude_consumed)
    pool = (
        failures
        if served_by is False
        else served_by_first(failures, served_by if isinstance(served_by, str) else None, limit, replay_share)
    )
    chosen = cap_client_share(pool, limit, max_client_share)
    episodes = _load(session, [c.id for c in chosen])
    rows: list[FailureRow] = []
    for candidate in chosen:
        row = failure_row(episodes[candidate.id], with_reason=with_reason, tool_call_parser=tool_call_parser)
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda r: _hash_unit(seed, r["episode_id"]))
    train = [r for r in rows if _hash_unit(seed, r["episode_id"]) >= heldout_fraction]
    heldout = [r for r in rows if _hash_unit(seed, r["episode_id"]) < heldout_fraction]
    batch_ids = {r["episode_id"] for r in rows}

    successes = [c for c in _success_candidates(session) if c.id not in batch_ids]
    reg_chosen = cap_client_share(successes, limit if regression_limit is None else regression_limit, max_client_share)
    reg_episodes = _load(session, [c.id for c in reg_chosen])
    regression = [r for r in (success_row(reg_episodes[c.id]) for c in reg_chosen) if r is not None]
    regression.sort(key=lambda r: _hash_unit(seed, r["episode_id"]))
    dataset = FailureDataset(
        train=train, heldout=heldout, regression=regression, episode_ids=[r["episode_id"] for r in rows]
    )
    log.info(
        "failure dataset: %s (from %d candidate failures, %d successes)",
        dataset.summary(),
        len(failures),
        len(successes),
    )
    return dataset


def failure_candidates(session: Session, *, exclude_consumed: bool = True) -> list[FailureCandidate]:
    """Every episode `build_failure_dataset` may draw from (before the client cap), newest first:
    trainable failures whose first attempt failed (or that feedback failed with expected calls),
    with a re-runnable verifier. The scheduler counts these to decide whether to train."""
    first = aliased(Attempt)
    stmt = (
        select(
            Episode.id,
            Episode.client_key_id,
            Episode.created_at,
            Episode.verifier,
            Episode.expected_calls,
            Episode.served_status,
            Episode.feedback_ok,
            Episode.feedback_expected_calls,
            Episode.adapter,
            first.ok,
            first.kind,
        )
        .join(first, and_(first.episode_id == Episode.id, first.index == 0))
        .where(Episode.status.in_(FAILED_FIRST_STATUSES), Episode.trainable.is_(True), Episode.purpose != "eval")
    )
    if exclude_consumed:
        run = aliased(TrainingRun)
        stmt = stmt.outerjoin(run, run.id == Episode.consumed_by_run).where(
            or_(Episode.consumed_by_run.is_(None), run.id.is_(None), run.status != "promoted")
        )
    stmt = stmt.order_by(Episode.created_at.desc(), Episode.id.desc())
    out = []
    for row in session.execute(stmt):
        eid, client, created, verifier, expected, served, fb_ok, fb_expected, adapter, first_ok, first_kind = row
        if first_kind != "answer" or (fb_ok is True and served == "failed"):
            continue  # the client says the answer our verifier failed was right: the verdicts are not trusted
        if first_ok is not False and fb_expected is None:
            continue  # the first attempt passed and no feedback says what was right
        spec, exp = _training_verifier(verifier, expected, fb_expected)
        if spec is None or not is_rerunnable(spec, exp):
            continue
        out.append(FailureCandidate(eid, client, created, adapter))
    return out


def served_by_first(
    candidates: Sequence[FailureCandidate], adapter: str | None, limit: int, replay_share: float
) -> list[FailureCandidate]:
    """The failures collected under `adapter` (the policy a warm-started run continues from), plus
    at most `replay_share` of `limit` earlier failures of other policies that no promoted run has
    solved yet; newest first within each part."""
    own = [c for c in candidates if c.adapter == adapter]
    others = [c for c in candidates if c.adapter != adapter]
    replay = min(len(others), int(replay_share * limit + 1e-9), max(0, limit - len(own)))
    chosen = {c.id for c in (*own[:limit], *others[:replay])}
    return [c for c in candidates if c.id in chosen]


def _success_candidates(session: Session) -> list[FailureCandidate]:
    stmt = (
        select(Episode.id, Episode.client_key_id, Episode.created_at, Episode.verifier, Episode.expected_calls)
        .where(
            Episode.status == "first_ok",
            Episode.purpose != "eval",
            or_(Episode.feedback_ok.is_(None), Episode.feedback_ok.is_(True)),
        )
        .order_by(Episode.created_at.desc(), Episode.id.desc())
    )
    out = []
    for eid, client, created, verifier, expected in session.execute(stmt):
        spec, exp = _training_verifier(verifier, expected, None)
        if spec is not None and is_rerunnable(spec, exp):
            out.append(FailureCandidate(eid, client, created))
    return out


def cap_client_share(candidates: Sequence[FailureCandidate], limit: int, max_share: float) -> list[FailureCandidate]:
    """The largest batch (at most `limit`) in which no client holds more than `max_share` of it.

    Candidates come newest first; each client contributes its newest episodes. Deterministic.
    """
    by_client: dict[str | None, list[FailureCandidate]] = defaultdict(list)
    for c in candidates:
        by_client[c.client].append(c)
    counts = sorted((len(v) for v in by_client.values()), reverse=True)
    size = min(limit, len(candidates))
    while size > 0:
        cap = size if max_share >= 1 else int(max_share * size + 1e-9)
        if sum(min(n, cap) for n in counts) >= size:
            break
        size -= 1
    if size <= 0:
        return []
    cap = size if max_share >= 1 else int(max_share * size + 1e-9)
    quotas = {client: min(len(items), cap) for client, items in by_client.items()}
    excess = sum(quotas.values()) - size
    # Trim the largest quotas first (ties: the client whose newest episode is oldest gives up first).
    order = sorted(quotas, key=lambda k: (-quotas[k], by_client[k][0].created_at, str(k)))
    while excess > 0:
        top = max(quotas.values())
        for client in order:
            if excess and quotas[client] == top:
                quotas[client] -= 1
                excess -= 1
    chosen_ids = {c.id for client, items in by_client.items() for c in items[: quotas[client]]}
    return [c for c in candidates if c.id in chosen_ids]


def _load(session: Session, ids: Sequence[str]) -> dict[str, Episode]:
    episodes: dict[str, Episode] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        stmt = select(Episode).where(Episode.id.in_(chunk)).options(selectinload(Episode.attempts))
        episodes.update({e.id: e for e in session.execute(stmt).scalars()})
    return episodes


def _hash_unit(seed: int, episode_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{episode_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --- rows ------------------------------------------------------------------------------------------


def _training_verifier(
    verifier: Any, expected: Any, feedback_expected: Any
) -> tuple[VerifierSpec | None, list[dict[str, Any]] | None]:
    """The spec and expected calls a retry is judged by; (None, None) for an unusable spec.

    The stored spec is parsed here, once per episode; rows carry its canonical JSON."""
    try:
        spec = VerifierSpec.parse(verifier if verifier is not None else "schema")
    except ValueError:
        return None, None
    if feedback_expected is not None:
        expected = feedback_expected
        if not spec.needs_reference:
            try:
                spec = VerifierSpec.parse({"type": "all", "of": [spec.to_json(), {"type": "reference"}]})
            except ValueError:  # nested too deep to wrap: the reference alone decides
                spec = VerifierSpec(kind="reference")
    return spec, expected


def failure_row(
    episode: Episode, *, with_reason: bool = False, tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER
) -> FailureRow | None:
    """The GRPO row of one failed episode, or None when it cannot be trained on."""
    attempts = sorted(episode.attempts, key=lambda a: a.index)
    if not attempts or attempts[0].kind != "answer":
        return None
    first = attempts[0]
    spec, expected = _training_verifier(episode.verifier, episode.expected_calls, episode.feedback_expected_calls)
    if spec is None or not spec.rerunnable(expected):
        return None
    task = list(episode.request_messages or [])
    if not task:
        return None
    failed = prompts.failed_assistant_message(first.text, first.tool_calls, tool_call_parser=tool_call_parser)
    reason = (first.reason or episode.feedback_reason) if with_reason else None
    history = prompts.reflection_messages(task, failed, reason or None, math=spec.math)
    return FailureRow(
        episode_id=episode.id,
        client_key_id=episode.client_key_id,
        task_messages=task,
        prompt_messages=history,
        tools=episode.request_tools or None,
        tool_choice=episode.tool_choice,
        verifier=spec.to_json(),
        expected=expected,
    )


def success_row(episode: Episode) -> FailureRow | None:
    """A regression row (a past first-attempt success): no reflection prompt."""
    spec, expected = _training_verifier(episode.verifier, episode.expected_calls, None)
    task = list(episode.request_messages or [])
    if spec is None or not task or not spec.rerunnable(expected):
        return None
    return FailureRow(
        episode_id=episode.id,
        client_key_id=episode.client_key_id,
        task_messages=task,
        prompt_messages=[],
        tools=episode.request_tools or None,
        tool_choice=episode.tool_choice,
        verifier=spec.to_json(),
        expected=expected,
    )
