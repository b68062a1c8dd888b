"""R5 through the API: under concurrency every answered request has exactly one stored episode."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from store.models import Attempt, Episode
from tests.api.conftest import BAD, GOOD, TOOLS, Rrr
from tests.support.upstream import Script, classify, text

CLIENTS = 32
REQUESTS = 20


def _responder(body: dict[str, Any]) -> Any:
    kind = classify(body["messages"])
    if kind == "reflection":
        return text("Use a string for the city.")
    if kind == "retry":
        return GOOD
    return BAD if "odd" in body["messages"][0]["content"] else GOOD


@pytest.mark.slow
def test_every_answered_request_has_exactly_one_episode(db_rrr: Rrr) -> None:
    db_rrr.reset(Script(responder=_responder))
    client = db_rrr.client()

    def one_client(worker: int) -> list[tuple[str, str]]:
        done = []
        for i in range(REQUESTS):
            parity = "odd" if (worker + i) % 2 else "even"
            raw = client.chat.completions.with_raw_response.create(
                model="rrr",
                tools=TOOLS,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": f"{parity} weather in Paris, request {worker}-{i}"}],
            )
            completion = raw.parse()
            assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
            assert raw.headers["x-rrr-verified"] == "true"
            done.append((completion.model_extra["rrr"]["episode_id"], completion.model_extra["rrr"]["status"]))
        return done

    with ThreadPoolExecutor(CLIENTS) as pool:
        answered = [item for batch in pool.map(one_client, range(CLIENTS)) for item in batch]

    assert len(answered) == CLIENTS * REQUESTS
    db_rrr.flush()
    with db_rrr.state.session_factory() as session:
        stored = dict(session.execute(select(Episode.id, Episode.status)).all())
        attempts = session.execute(select(func.count()).select_from(Attempt)).scalar_one()
    assert len(stored) == len(answered)
    assert stored == dict(answered)
    assert {s for _, s in answered} == {"first_ok", "retry_ok"}
    retried = sum(s == "retry_ok" for _, s in answered)
    assert attempts == len(answered) + 2 * retried
    assert db_rrr.state.writer.stats()["dropped"] == 0
