"""The embedded default: rrr with the in-process local engine (a real tiny model), adapters swapped live."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from adapters.folder import write_adapter_folder
from api.app import create_app
from store.registry import create_adapter
from tests.api.conftest import ADMIN, INFER, LiveServer, make_settings
from tests.conftest import ToolModel

pytestmark = pytest.mark.slow


def test_local_engine_answers_verifies_and_serves_an_activated_adapter(
    tiny_tool_model: ToolModel, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    import httpx

    settings = make_settings(tmp_path, model=str(tiny_tool_model.path), base_model_name="tiny", deadline_s=120.0)
    app = create_app(settings)
    with LiveServer(app) as server:
        base = f"http://127.0.0.1:{server.port}"
        client = openai.OpenAI(base_url=base + "/v1", api_key=INFER, max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="rrr",
            messages=tiny_tool_model.prompt("call"),
            tools=tiny_tool_model.tools,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=64,
        )
        completion = raw.parse()
        assert raw.headers["x-rrr-verified"] == "true"
        call = completion.choices[0].message.tool_calls[0]
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})

        broken = client.chat.completions.create(
            model="rrr",
            messages=tiny_tool_model.prompt("broken"),
            tools=tiny_tool_model.tools,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=64,
        )
        episode_id = broken.model_extra["rrr"]["episode_id"]  # type: ignore[index]
        state = app.state.rrr
        assert state.writer.flush(15)
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
        episode = admin.get(f"/v1/episodes/{episode_id}").json()
        assert episode["attempts"][0]["verdict"]["ok"] is False
        assert "malformed" in episode["attempts"][0]["verdict"]["reason"]
        assert [a["kind"] for a in episode["attempts"]] == ["answer", "reflection", "retry"]

        folder, digest = write_adapter_folder(tiny_adapter_dir, settings.resolved_adapters_root(), 1, base_model="tiny")
        with state.session_factory.begin() as session:
            create_adapter(
                session, name="rrr-v1", version=1, path=str(folder), base_model="tiny", manifest_sha256=digest
            )
        activated = admin.post("/v1/adapters/rrr-v1/activate")
        assert activated.status_code == 200, activated.text
        assert [m.id for m in client.models.list().data] == ["rrr", "tiny", "rrr-v1"]
        pinned = client.chat.completions.create(
            model="rrr", messages=tiny_tool_model.prompt("hello"), max_tokens=8, temperature=0
        )
        assert state.writer.flush(15)
        assert admin.get(f"/v1/episodes/{pinned.model_extra['rrr']['episode_id']}").json()["adapter"] == "rrr-v1"  # type: ignore[index]

        chunks = list(
            client.chat.completions.create(
                model="tiny",
                messages=tiny_tool_model.prompt("call"),
                tools=tiny_tool_model.tools,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=64,
                stream=True,
            )
        )
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        admin.close()
