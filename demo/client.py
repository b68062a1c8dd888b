"""The demo as a client of the rrr API: send tasks, wait for their records, read the inspection routes.

Who calls it: ``demo.run`` (stages 3, 5 and 6) and tests. Tasks go through the official
``openai`` SDK exactly as a user's code would send them: ``model`` names the policy (``rrr`` =
whatever is active), and the ``rrr`` extension object selects the reference verifier with the
task's expected calls and tags the episode. The verdict of each request is read from the ``rrr``
object of its answer (status ``first_ok`` / ``retry_ok`` / ``failed``, the episode id, the adapter
that served it). Nothing here touches the store except ``wait_recorded``, which only counts rows.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from demo.corpus import DemoItem

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


class ClientError(RuntimeError):
    """The API could not be used as the demo needs (every request failed, a model never appeared)."""


@dataclass
class Sent:
    """The API's verdict per task: id -> status, id -> episode id, and the adapters that served."""

    statuses: dict[str, str] = field(default_factory=dict)
    episodes: dict[str, str] = field(default_factory=dict)
    adapters: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


async def send_tasks(
    api_url: str,
    items: Sequence[DemoItem],
    *,
    model: str,
    task: str,
    concurrency: int = 4,
    max_tokens: int = 128,
    timeout_s: float = 180.0,
    desc: str = "tasks",
    progress: bool = True,
    purpose: str | None = None,
) -> Sent:
    """Each item as one chat completion (greedy) with the reference verifier; `concurrency` in flight.

    ``purpose="eval"`` marks the episodes as evaluation traffic: recorded, never training data.
    """
    extension: dict[str, object] = {"verifier": "reference", "task": task}
    if purpose is not None:
        extension["purpose"] = purpose
    import openai
    from tqdm.auto import tqdm

    client = openai.AsyncOpenAI(base_url=f"{api_url}/v1", api_key="rrr-demo", max_retries=0, timeout=timeout_s)
    sent = Sent()
    limit = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(items), desc=desc, unit="task", disable=not progress, leave=True)

    async def one(item: DemoItem) -> None:
        async with limit:
            try:
                completion = await client.chat.completions.create(
                    model=model,
                    messages=item.messages,  # type: ignore[arg-type]
                    tools=item.tools,  # type: ignore[arg-type]
                    temperature=0.0,
                    max_tokens=max_tokens,
                    extra_body={"rrr": {**extension, "expected_tool_calls": item.expected}},
                )
                info = (completion.model_extra or {}).get("rrr") or {}
                sent.statuses[item.id] = str(info.get("status") or "error")
                if info.get("episode_id"):
                    sent.episodes[item.id] = str(info["episode_id"])
                sent.adapters[str(info.get("adapter") or "base")] += 1
            except openai.APIError as exc:
                sent.statuses[item.id] = "error"
                sent.errors.append(f"{item.id}: {type(exc).__name__}: {str(exc)[:200]}")
            bar.update(1)
            counts = Counter(sent.statuses.values())
            bar.set_postfix(
                first_ok=counts["first_ok"], retry_ok=counts["retry_ok"], failed=counts["failed"], refresh=False
            )

    try:
        await asyncio.gather(*(one(item) for item in items))
    finally:
        bar.close()
        await client.close()
    if sent.errors and len(sent.errors) == len(items):
        raise ClientError(f"every request to {api_url} failed; first error: {sent.errors[0]}")
    return sent


def wait_recorded(sessions: sessionmaker[Session], task: str, n: int, timeout_s: float = 60.0) -> int:
    """Wait until the API's batched writer has stored `n` episodes tagged `task`; returns how many are."""
    from sqlalchemy import func, select

    from store.models import Episode

    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            stored = int(session.execute(select(func.count(Episode.id)).where(Episode.task == task)).scalar_one())
        if stored >= n or time.monotonic() > deadline:
            return stored
        time.sleep(0.2)


async def wait_model_listed(api_url: str, name: str, timeout_s: float = 15.0, *, alias: bool = False) -> None:
    """The API resolves models from a registry snapshot refreshed in the background: wait until
    `name` is listed (or is what the `rrr` alias points at); with ``alias``, until the alias points at it
    (a promoted adapter is listed a moment before the snapshot that makes it the active one)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as http:
        while time.monotonic() < deadline:
            cards = (await http.get(f"{api_url}/v1/models")).json().get("data", [])
            if any(
                (card.get("id") == name and not alias) or (card.get("id") == "rrr" and card.get("root") == name)
                for card in cards
            ):
                return
            await asyncio.sleep(0.25)
    raise ClientError(f"the API does not list {name} after {timeout_s:g}s")


def sample_episode(sent: Sent) -> str | None:
    """An episode with a reflection: a rescued one if any, else a failed one."""
    for wanted in ("retry_ok", "failed"):
        for task_id, status in sent.statuses.items():
            if status == wanted and task_id in sent.episodes:
                return sent.episodes[task_id]
    return None


async def snapshot_inspection(
    api_url: str, out_dir: Path, *, sample_episode: str | None, run_id: str | None
) -> dict[str, str]:
    """The inspection URLs, each fetched once and saved as `<name>.json` under `out_dir` (the demo's
    servers stop when it ends). On loopback without keys these routes are open; with keys they need
    an admin key (`Authorization: Bearer`)."""
    import httpx

    urls = {
        "failed_episodes": f"{api_url}/v1/episodes?status=failed",
        "adapters": f"{api_url}/v1/adapters",
        "training_runs": f"{api_url}/v1/training-runs",
        "stats": f"{api_url}/v1/stats",
    }
    if sample_episode:
        urls["episode_with_reflection"] = f"{api_url}/v1/episodes/{sample_episode}"
    if run_id:
        urls["training_run"] = f"{api_url}/v1/training-runs/{run_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(timeout=30.0) as http:
        for name, url in urls.items():
            response = await http.get(url)
            if response.status_code != 200:
                raise ClientError(f"GET {url} answered {response.status_code}: {response.text[:200]}")
            (out_dir / f"{name}.json").write_text(json.dumps(response.json(), indent=2) + "\n", encoding="utf-8")
    return urls
