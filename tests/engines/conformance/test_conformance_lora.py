"""§8.2-§8.5 and §8.7: runtime LoRA routes, their exact bodies and headers, the order of their checks,
adapters refused on disk, the registry's order, in-place reloads and registry-only unloads."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines.conformance.servers import BAD_ADAPTERS, copy_adapter, make_bad_adapter
from tests.engines.conformance.target import Target, needs_local

Names = Callable[[str], str]
ALREADY = (
    "The lora adapter '{}' has already been loaded. If you want to load the adapter in place, "
    "set 'load_inplace' to True."
)


def load(http: httpx.Client, name: str, path: str, **extra: Any) -> httpx.Response:
    return http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path, **extra})


def unload(http: httpx.Client, name: str) -> httpx.Response:
    return http.post("/v1/unload_lora_adapter", json={"lora_name": name})


def cards(http: httpx.Client) -> list[dict[str, Any]]:
    return list(http.get("/v1/models").json()["data"])


def adapter_ids(http: httpx.Client) -> list[str]:
    return [c["id"] for c in cards(http) if c["parent"] is not None]


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == response.status_code
    return dict(body["error"])


# --- success ------------------------------------------------------------------------------------------


def test_load_and_unload_answer_the_exact_plain_text_without_a_content_type(
    http: httpx.Client, adapter: str, names: Names
) -> None:
    name = names("plain")
    loaded = load(http, name, adapter)
    assert loaded.status_code == 200
    assert loaded.text == f"Success: LoRA adapter '{name}' added successfully."
    assert "content-type" not in loaded.headers
    removed = unload(http, name)
    assert removed.status_code == 200
    assert removed.text == f"Success: LoRA adapter '{name}' removed successfully."
    assert "content-type" not in removed.headers


def test_the_openai_sdk_loads_and_unloads_with_cast_to_str(target: Target, adapter: str, names: Names) -> None:
    name = names("sdk")
    with target.sdk() as client:
        assert (
            client.post("load_lora_adapter", cast_to=str, body={"lora_name": name, "lora_path": adapter})
            == f"Success: LoRA adapter '{name}' added successfully."
        )
        assert (
            client.post("unload_lora_adapter", cast_to=str, body={"lora_name": name})
            == f"Success: LoRA adapter '{name}' removed successfully."
        )


def test_the_adapter_card_keeps_the_path_as_sent_and_names_the_first_base(
    http: httpx.Client, target: Target, adapter: str, names: Names
) -> None:
    name, sent = names("card"), adapter.rstrip("/") + "/"
    assert load(http, name, sent).status_code == 200
    card = next(c for c in cards(http) if c["id"] == name)
    assert card["root"] == sent, "root is lora_path exactly as sent, not normalised"
    assert (card["parent"], card["max_model_len"], card["object"], card["owned_by"]) == (
        target.base_model(),
        None,
        "model",
        "vllm",
    )
    assert card["permission"][0]["object"] == "model_permission"


def test_charset_parameters_are_accepted_on_json(http: httpx.Client, adapter: str, names: Names) -> None:
    name = names("charset")
    response = http.post(
        "/v1/load_lora_adapter",
        content=json.dumps({"lora_name": name, "lora_path": adapter}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


# --- the registry -------------------------------------------------------------------------------------


def test_registry_keeps_insertion_order_and_in_place_reload_keeps_the_position(
    http: httpx.Client, adapter: str, names: Names, scratch: Path, target: Target
) -> None:
    first, second, third = names("order-a"), names("order-b"), names("order-c")
    for name in (first, second, third):
        assert load(http, name, adapter).status_code == 200
    ids = adapter_ids(http)
    assert [i for i in ids if i in (first, second, third)] == [first, second, third]
    assert cards(http)[0]["parent"] is None, "base models come before adapters"

    assert target.local_adapter is not None
    moved = str(copy_adapter(target.local_adapter, scratch / "v2"))
    assert load(http, first, moved).status_code == 400, "a registered name needs load_inplace"
    reloaded = load(http, first, moved, load_inplace=True)
    assert (reloaded.status_code, reloaded.text) == (200, f"Success: LoRA adapter '{first}' added successfully.")
    after = [c for c in cards(http) if c["id"] in (first, second, third)]
    assert [c["id"] for c in after] == [first, second, third], "an in-place reload keeps its position"
    assert after[0]["root"] == moved

    assert unload(http, second).status_code == 200
    assert second not in adapter_ids(http), "unloaded adapters disappear at once"
    assert load(http, second, adapter).status_code == 200
    assert [i for i in adapter_ids(http) if i in (first, second, third)] == [first, third, second]


def test_load_inplace_of_a_new_name_is_a_plain_load(http: httpx.Client, adapter: str, names: Names) -> None:
    name = names("inplace-new")
    assert load(http, name, adapter, load_inplace=True).status_code == 200
    assert name in adapter_ids(http)


def test_a_failed_reload_leaves_the_registered_adapter_serving(
    http: httpx.Client, adapter: str, names: Names, target: Target
) -> None:
    name = names("keep")
    assert load(http, name, adapter).status_code == 200
    broken = load(http, name, "/tmp/rrr-conformance-missing/adapter", load_inplace=True)
    assert broken.status_code == 404
    card = next(c for c in cards(http) if c["id"] == name)
    assert card["root"] == adapter
    chat = http.post(
        "/v1/chat/completions", json={"model": name, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 200 and chat.json()["model"] == name


def test_unload_is_registry_only_and_in_flight_requests_finish(
    http: httpx.Client, target: Target, adapter: str, names: Names
) -> None:
    name = names("inflight")
    assert load(http, name, adapter).status_code == 200
    frames: list[str] = []
    first_frame = threading.Event()

    def stream() -> None:
        body = {
            "model": name,
            "stream": True,
            "max_tokens": 400,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        }
        with target.http() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    first_frame.set()

    worker = threading.Thread(target=stream)
    worker.start()
    assert first_frame.wait(60), "the stream started"
    assert unload(http, name).status_code == 200
    at_unload = len(frames)
    gone = http.post(
        "/v1/chat/completions", json={"model": name, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert gone.status_code == 404, "new requests for an unloaded name are refused at once"
    worker.join(120)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all("error" not in c for c in chunks), "the in-flight request was not aborted"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert {c["model"] for c in chunks} == {name}
    assert len(frames) > at_unload, "frames kept coming after the unload"


# --- errors and their order (§2.2, §2.3, §8.3) ------------------------------------------------------


def test_missing_field_is_a_400_validation_error_not_422(http: httpx.Client) -> None:
    response = http.post("/v1/load_lora_adapter", json={"lora_name": "x"})
    assert response.status_code == 400
    err = error(response)
    assert err["type"] == "Bad Request"
    assert err["param"] == "body.lora_path"
    assert err["message"].startswith("1 validation error:")
    assert "'missing'" in err["message"] and "lora_path" in err["message"]


@pytest.mark.parametrize("route", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"])
def test_a_body_that_is_not_declared_json_is_a_400(http: httpx.Client, route: str) -> None:
    response = http.post(
        route, content=json.dumps({"lora_name": "x", "lora_path": "/x"}), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400
    assert "Unsupported Media Type" in error(response)["message"]


@pytest.mark.parametrize("route", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"])
def test_get_on_the_lora_routes_is_405(http: httpx.Client, route: str) -> None:
    response = http.get(route)
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})


@pytest.mark.parametrize(
    "body",
    [{"lora_name": "", "lora_path": "/x"}, {"lora_name": "x", "lora_path": ""}, {"lora_name": "", "lora_path": ""}],
)
def test_empty_fields_come_first(http: httpx.Client, body: dict[str, str], target: Target) -> None:
    if body["lora_name"] == "x":
        body = {**body, "lora_name": target.base_model()}  # empty path beats the base-name conflict
    response = http.post("/v1/load_lora_adapter", json=body)
    assert response.status_code == 400
    err = error(response)
    assert (err["type"], err["message"]) == ("InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")


def test_the_base_name_conflict_comes_before_path_checks(http: httpx.Client, target: Target) -> None:
    base = target.base_model()
    response = load(http, base, "/tmp/rrr-conformance-missing/adapter")
    assert response.status_code == 400
    err = error(response)
    assert (err["type"], err["message"]) == (
        "InvalidUserInput",
        f"The lora adapter '{base}' conflicts with a served base model.",
    )


def test_a_duplicate_comes_before_path_checks(http: httpx.Client, adapter: str, names: Names) -> None:
    name = names("dup")
    assert load(http, name, adapter).status_code == 200
    response = load(http, name, "/tmp/rrr-conformance-missing/adapter")
    assert response.status_code == 400
    err = error(response)
    assert (err["type"], err["message"]) == ("InvalidUserInput", ALREADY.format(name))


@pytest.mark.parametrize("kind", BAD_ADAPTERS)
def test_adapters_vllm_refuses_on_disk(
    http: httpx.Client, target: Target, scratch: Path, names: Names, kind: str
) -> None:
    assert target.local_adapter is not None
    name = names(f"bad-{kind.replace('_', '-')}")
    path = make_bad_adapter(kind, target.local_adapter, scratch / kind)
    before = adapter_ids(http)
    response = load(http, name, str(path))
    err = error(response)
    if kind in ("no_dir", "no_config"):
        assert (response.status_code, err["type"]) == (404, "NotFoundError")
        assert err["message"] == f"Loading lora {name} failed: No adapter found for <path>"
    else:
        assert (response.status_code, err["type"]) == (500, "InternalServerError")
        if target.tool_model:  # only ours: the wording of engine errors varies with the executor (§10)
            assert err["message"].startswith("Call to add_lora method failed: "), err["message"]
    assert "/tmp/" not in err["message"], "paths are sanitised to <path>"
    assert adapter_ids(http) == before, "a failed load leaves the registry unchanged"


@needs_local
def test_rank_errors_name_both_ranks(http: httpx.Client, target: Target, scratch: Path, names: Names) -> None:
    assert target.local_adapter is not None
    path = make_bad_adapter("rank_too_high", target.local_adapter, scratch / "rank")
    err = error(load(http, names("rank"), str(path)))
    assert err["message"] == "Call to add_lora method failed: LoRA rank 1024 is greater than max_lora_rank 16."


def test_unload_errors(http: httpx.Client, names: Names) -> None:
    empty = unload(http, "")
    assert empty.status_code == 400
    assert (error(empty)["type"], error(empty)["message"]) == (
        "InvalidUserInput",
        "'lora_name' needs to be provided to unload a LoRA adapter.",
    )
    name = names("never-loaded")
    missing = unload(http, name)
    assert missing.status_code == 404
    assert (error(missing)["type"], error(missing)["message"]) == (
        "NotFoundError",
        f"The lora adapter '{name}' cannot be found.",
    )


def test_unloading_twice_is_404_the_second_time(http: httpx.Client, adapter: str, names: Names) -> None:
    name = names("twice")
    assert load(http, name, adapter).status_code == 200
    assert unload(http, name).status_code == 200
    assert unload(http, name).status_code == 404


# --- runtime updating off (§2.1) ----------------------------------------------------------------------


@needs_local
@pytest.mark.parametrize("route", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"])
def test_without_runtime_updating_the_routes_do_not_exist(locked_engine_server: Any, route: str) -> None:
    from tests.engines.conftest import LOCKED_KEY

    auth = {"Authorization": f"Bearer {LOCKED_KEY}"}
    response = httpx.post(
        f"{locked_engine_server.url}{route}", json={"lora_name": "x", "lora_path": "/x"}, headers=auth, timeout=30
    )
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
