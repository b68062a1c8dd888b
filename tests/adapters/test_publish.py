"""adapters/: folders with manifests, load/probe/flip on publish, drains, cleanup; and the
activate/rollback of published adapters (`adapters.serving`, also `rrr adapters`) on real engines.

The engines are real `LocalEngine`s (the tiny model) behind a real `EnginePool`: a replica with a
lower `max_lora_rank` makes a load fail on one engine only, and one with a tiny context window makes
the probe fail after a successful load. The folder check alone is tested in tests/adapters/test_serving.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from adapters import folder as adapter_folder
from adapters import serving
from adapters.folder import UnsafeAdapter, verify_adapter_dir
from adapters.serving import (
    ActivationError,
    activate,
    collect_folders,
    publish_adapter,
    reject_stale_candidates,
    rollback,
    unload_drained,
)
from engines.pool import EnginePool
from store import repos
from store.db import make_engine, make_session_factory, upgrade

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

Factory = Callable[[], Session]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[Factory]:
    url = f"sqlite:///{tmp_path / 'rrr.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def local_engines(tiny_model_dir: Path) -> dict[str, Any]:
    from engines.local import LocalEngine

    return {
        "a": LocalEngine(str(tiny_model_dir), served_name="tiny", max_lora_rank=16, name="a"),
        "b": LocalEngine(str(tiny_model_dir), served_name="tiny", max_lora_rank=16, name="b"),
        "rank8": LocalEngine(str(tiny_model_dir), served_name="tiny", max_lora_rank=8, name="rank8"),
        "short": LocalEngine(str(tiny_model_dir), served_name="tiny", max_lora_rank=16, max_model_len=8, name="short"),
    }


@pytest.fixture(autouse=True)
def clean_engines(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "local_engines" not in request.fixturenames:
        return
    for engine in request.getfixturevalue("local_engines").values():
        for card in run(engine.list_models())[1:]:
            run(engine.unload_adapter(card["id"]))


@pytest.fixture(scope="module")
def lora16(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learner.tiny import save_tiny_lora

    return save_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora16") / "adapter", seed=2, r=16)


def pool(local_engines: dict[str, Any], *names: str) -> EnginePool:
    return EnginePool([local_engines[n] for n in names])


def listed(engine: Any) -> list[str]:
    return [card["id"] for card in run(engine.list_models())[1:]]


async def alisted(engine: Any) -> list[str]:
    return [card["id"] for card in (await engine.list_models())[1:]]


def active_name(session_factory: Factory) -> str | None:
    with session_factory() as s:
        adapter = repos.get_active_adapter(s)
        return adapter.name if adapter else None


def status_of(session_factory: Factory, name: str) -> str:
    with session_factory() as s:
        adapter = repos.get_adapter(s, name)
        assert adapter is not None
        return adapter.status


def do_publish(src: Path, root: Path, session_factory: Factory, engines: Any, **kw: Any) -> serving.PublishResult:
    kw.setdefault("unload_in_background", False)
    return run(
        publish_adapter(
            src,
            adapters_root=root,
            session_factory=session_factory,
            engines=engines,
            base_model="tiny",
            run_id=None,
            **kw,
        )
    )


# --- folders ----------------------------------------------------------------------------------------


def test_publish_writes_a_manifest_that_verifies_and_flips_the_pointer(
    tiny_adapter_dir: Path, tmp_path: Path, session_factory: Factory, local_engines: dict[str, Any]
) -> None:
    root = tmp_path / "adapters"
    engines = pool(local_engines, "a", "b")
    result = do_publish(tiny_adapter_dir, root, session_factory, engines)
    assert result.ok and result.name == "rrr-v1" and result.previous is None
    folder = root / "rrr-v1"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert (folder / name).read_bytes() == (tiny_adapter_dir / name).read_bytes()
    assert not list(root.glob(".*"))  # no temp folder left
    with session_factory() as s:
        row = repos.get_adapter(s, "rrr-v1")
        assert row is not None and row.status == "active" and row.path == str(folder.resolve())
        assert row.manifest_sha256 == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
        assert row.metrics is not None and row.metrics["probe"]["replicas"] == 2
    verified = verify_adapter_dir(folder, root, manifest_sha256=row.manifest_sha256)
    assert verified.path == str(folder.resolve())
    assert listed(local_engines["a"]) == listed(local_engines["b"]) == ["rrr-v1"]

    second = do_publish(tiny_adapter_dir, root, session_factory, engines)
    assert second.ok and second.name == "rrr-v2" and second.previous == "rrr-v1"
    assert active_name(session_factory) == "rrr-v2" and status_of(session_factory, "rrr-v1") == "retired"


def test_pickle_weights_and_missing_files_are_refused_before_anything_is_written(
    tiny_adapter_dir: Path, tmp_path: Path, session_factory: Factory, local_engines: dict[str, Any]
) -> None:
    root = tmp_path / "adapters"
    src = tmp_path / "src"
    shutil.copytree(tiny_adapter_dir, src)
    (src / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeAdapter, match="only safetensors"):
        do_publish(src, root, session_factory, pool(local_engines, "a"))
    (src / "adapter_model.bin").unlink()
    (src / "adapter_model.safetensors").unlink()
    with pytest.raises(UnsafeAdapter, match=r"no adapter_model\.safetensors"):
        do_publish(src, root, session_factory, pool(local_engines, "a"))
    assert list(root.iterdir()) == []
    with session_factory() as s:
        assert repos.list_adapters(s) == []


def test_folder_appears_only_by_rename_of_a_complete_temp_folder(
    tiny_adapter_dir: Path,
    tmp_path: Path,
    session_factory: Factory,
    local_engines: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "adapters"
    seen: dict[str, Any] = {}
    real_rename = os.rename

    def crash_at_rename(src: Any, dst: Any) -> None:
        seen["visible"] = sorted(p.name for p in root.iterdir())
        manifest = json.loads((Path(src) / "manifest.json").read_text())
        seen["complete"] = all(
            hashlib.sha256((Path(src) / n).read_bytes()).hexdigest() == e["sha256"]
            for n, e in manifest["files"].items()
        )
        seen["dst"] = Path(dst).name
        raise OSError("simulated crash at rename")

    monkeypatch.setattr(adapter_folder.os, "rename", crash_at_rename)
    with pytest.raises(OSError, match="simulated crash"):
        do_publish(tiny_adapter_dir, root, session_factory, pool(local_engines, "a"))
    assert seen == {"visible": [".rrr-v1.tmp"], "complete": True, "dst": "rrr-v1"}
    assert list(root.iterdir()) == []  # the temp folder is cleaned up, nothing half-written is visible
    with session_factory() as s:
        assert repos.list_adapters(s) == []
    monkeypatch.setattr(adapter_folder.os, "rename", real_rename)
    assert do_publish(tiny_adapter_dir, root, session_factory, pool(local_engines, "a")).name == "rrr-v1"


# --- load, probe, flip -------------------------------------------------------------------------------


def test_a_failed_load_on_one_engine_changes_nothing(
    tiny_adapter_dir: Path, lora16: Path, tmp_path: Path, session_factory: Factory, local_engines: dict[str, Any]
) -> None:
    root = tmp_path / "adapters"
    engines = pool(local_engines, "a", "rank8")
    assert do_publish(tiny_adapter_dir, root, session_factory, engines).ok  # r=8 loads everywhere
    result = do_publish(lora16, root, session_factory, engines)  # r=16 > the second engine's max rank
    assert not result.ok and result.name == "rrr-v2"
    assert "500" in (result.reason or "") and "max_lora_rank 8" in (result.reason or "")
    assert active_name(session_factory) == "rrr-v1"
    assert status_of(session_factory, "rrr-v2") == "rejected"
    with session_factory() as s:
        row = repos.get_adapter(s, "rrr-v2")
        assert row is not None and row.metrics is not None and "max_lora_rank" in row.metrics["rejected_reason"]
    assert listed(local_engines["a"]) == ["rrr-v1"]  # loaded there first, then unloaded again
    assert listed(local_engines["rank8"]) == ["rrr-v1"]


def test_a_failed_probe_changes_nothing(
    tiny_adapter_dir: Path, tmp_path: Path, session_factory: Factory, local_engines: dict[str, Any]
) -> None:
    root = tmp_path / "adapters"
    assert do_publish(tiny_adapter_dir, root, session_factory, pool(local_engines, "a")).ok
    result = do_publish(tiny_adapter_dir, root, session_factory, pool(local_engines, "a", "short"))
    assert not result.ok and (result.reason or "").startswith("probe failed")
    assert active_name(session_factory) == "rrr-v1"
    assert status_of(session_factory, "rrr-v2") == "rejected"
    assert listed(local_engines["a"]) == ["rrr-v1"] and listed(local_engines["short"]) == []


def test_rollback_reloads_and_flips_back_and_activate_refuses_what_cannot_serve(
    tiny_adapter_dir: Path, lora16: Path, tmp_path: Path, session_factory: Factory, local_engines: dict[str, Any]
) -> None:
    root = tmp_path / "adapters"
    engines = pool(local_engines, "a", "b")

    async def scenario() -> None:
        kw: dict[str, Any] = {"adapters_root": root, "session_factory": session_factory, "engines": engines}
        v1 = await publish_adapter(tiny_adapter_dir, base_model="tiny", drain_s=0.0, **kw)
        v2 = await publish_adapter(lora16, base_model="tiny", drain_s=0.0, **kw)
        assert v1.ok and v2.ok
        await serving.wait_background_unloads()
        assert await alisted(local_engines["a"]) == await alisted(local_engines["b"]) == ["rrr-v2"]  # v1 drained
        back = await rollback(**kw)
        assert back.active is not None and back.active.name == "rrr-v1" and back.replaced == "rrr-v2"
        assert active_name(session_factory) == "rrr-v1"
        assert sorted(await alisted(local_engines["b"])) == ["rrr-v1", "rrr-v2"]  # reloaded before the flip
        flipped = await activate("rrr-v2", **kw)
        assert flipped.active is not None and flipped.active.name == "rrr-v2" and flipped.replaced == "rrr-v1"
        assert active_name(session_factory) == "rrr-v2"
        serving.schedule_unload(engines, session_factory, "rrr-v1", 0.0, adapters_root=root)
        await serving.wait_background_unloads()
        assert await alisted(local_engines["a"]) == ["rrr-v2"]

        # A tampered folder cannot be activated, and a failed rollback leaves the pointer alone.
        weights = root / "rrr-v1" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
        with pytest.raises(ActivationError, match="rrr-v1 cannot serve"):
            await rollback(**kw)
        with pytest.raises(ActivationError, match="cannot serve") as info:
            await activate("rrr-v1", **kw)
        assert info.value.kind == "unsafe"
        assert active_name(session_factory) == "rrr-v2"
        with pytest.raises(repos.AdapterNotFound):
            await activate("rrr-v99", **kw)

    run(scenario())


def test_rejected_adapters_cannot_be_activated_and_rollback_skips_them(
    tiny_adapter_dir: Path, tmp_path: Path, session_factory: Factory, local_engines: dict[str, Any]
) -> None:
    root = tmp_path / "adapters"
    assert do_publish(tiny_adapter_dir, root, session_factory, pool(local_engines, "a")).ok
    assert not do_publish(tiny_adapter_dir, root, session_factory, pool(local_engines, "a", "short")).ok
    kw: dict[str, Any] = {
        "adapters_root": root,
        "session_factory": session_factory,
        "engines": pool(local_engines, "a"),
    }
    with pytest.raises(ActivationError, match="rejected"):
        run(activate("rrr-v2", **kw))
    back = run(rollback(**kw))  # v2 was rejected: back to the base model
    assert back.changed and back.active is None and back.replaced == "rrr-v1"
    assert active_name(session_factory) is None
    assert not run(rollback(**kw)).changed


# --- housekeeping -----------------------------------------------------------------------------------


def test_drained_versions_are_unloaded_and_old_folders_deleted_only_cycles_later(
    tiny_adapter_dir: Path, tmp_path: Path, session_factory: Factory, local_engines: dict[str, Any]
) -> None:
    root = tmp_path / "adapters"
    engines = pool(local_engines, "a")
    for _ in range(3):
        assert do_publish(tiny_adapter_dir, root, session_factory, engines).ok
    assert listed(local_engines["a"]) == ["rrr-v1", "rrr-v2", "rrr-v3"]  # nothing unloaded yet
    assert run(unload_drained(engines, session_factory, drain_s=3600)) == []  # the flip is too recent
    assert sorted(run(unload_drained(engines, session_factory, drain_s=0))) == ["rrr-v1", "rrr-v2"]
    assert listed(local_engines["a"]) == ["rrr-v3"]

    (root / ".rrr-v9.tmp").mkdir()  # left by a publish that crashed before its rename
    assert run(collect_folders(root, session_factory, engines, keep_cycles=2)) == [".rrr-v9.tmp"]
    assert do_publish(tiny_adapter_dir, root, session_factory, engines).ok  # v4
    assert run(collect_folders(root, session_factory, engines, keep_cycles=2)) == ["rrr-v1"]
    assert do_publish(tiny_adapter_dir, root, session_factory, engines).ok  # v5
    assert run(collect_folders(root, session_factory, engines, keep_cycles=2)) == ["rrr-v2"]
    assert do_publish(tiny_adapter_dir, root, session_factory, engines).ok  # v6
    # v3 is old enough, but the engine still lists it: kept until it is unloaded.
    assert run(collect_folders(root, session_factory, engines, keep_cycles=2)) == []
    run(unload_drained(engines, session_factory, drain_s=0))
    assert run(collect_folders(root, session_factory, engines, keep_cycles=2)) == ["rrr-v3"]
    assert sorted(p.name for p in root.iterdir()) == ["rrr-v4", "rrr-v5", "rrr-v6"]
    # After a rollback the rollback target of the active version is kept whatever its age.
    back = run(rollback(session_factory=session_factory, engines=engines, adapters_root=root))
    assert back.active is not None and back.active.name == "rrr-v5"
    with session_factory() as s, s.begin():
        repos.activate_adapter(s, "rrr-v6")
        repos.rollback_adapter(s)
    assert active_name(session_factory) == "rrr-v5"
    # The next version number never reuses a folder's number, even without a row.
    (root / "rrr-v7").mkdir()
    assert do_publish(tiny_adapter_dir, root, session_factory, engines).name == "rrr-v8"


def test_stale_candidates_are_rejected(tmp_path: Path, session_factory: Factory) -> None:
    with session_factory() as s, s.begin():
        repos.create_adapter(s, name="rrr-v1", version=1, path=str(tmp_path), base_model="tiny")
    assert reject_stale_candidates(session_factory) == ["rrr-v1"]
    assert status_of(session_factory, "rrr-v1") == "rejected"


# --- the CLI ----------------------------------------------------------------------------------------


def test_rrr_adapters_cli_lists_activates_and_rolls_back(
    tiny_model_dir: Path, tiny_adapter_dir: Path, lora16: Path, tmp_path: Path
) -> None:
    """`rrr adapters list|activate|rollback` against `rrr engine serve`'s app (uvicorn in a thread)."""
    import socket
    import threading
    import time

    import uvicorn
    from typer.testing import CliRunner

    from cli import app
    from engines.local import LocalEngine
    from engines.server import create_app
    from engines.vllm import VLLMEngine

    url = f"sqlite:///{tmp_path / 'rrr.db'}"
    upgrade(url)
    db = make_engine(url)
    sessions = make_session_factory(db)
    root = tmp_path / "adapters"
    engine = LocalEngine(str(tiny_model_dir), served_name="tiny", max_lora_rank=16)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, served_model_name="tiny", enable_lora=True, allow_runtime_lora_updating=True),
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    engine_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:

        async def publish_two() -> None:
            engines = EnginePool([VLLMEngine(engine_url)])
            try:
                for src in (tiny_adapter_dir, lora16):
                    result = await publish_adapter(
                        src,
                        adapters_root=root,
                        session_factory=sessions,
                        engines=engines,
                        base_model="tiny",
                        unload_in_background=False,
                    )
                    assert result.ok, result
            finally:
                await engines.aclose()

        run(publish_two())
        common = ["--database-url", url, "--engine-url", engine_url, "--adapters-root", str(root)]
        runner = CliRunner()
        listing = runner.invoke(app, ["adapters", "list", "--json", "--database-url", url])
        assert listing.exit_code == 0, listing.output
        rows = json.loads(listing.stdout)
        assert [(r["name"], r["status"]) for r in rows] == [("rrr-v2", "active"), ("rrr-v1", "retired")]
        back = runner.invoke(app, ["adapters", "rollback", *common, "--unload-after", "0"])
        assert back.exit_code == 0 and "rrr-v1 is active" in back.stdout, back.output

        def served() -> list[str]:
            import httpx

            return sorted(c["id"] for c in httpx.get(engine_url + "/v1/models").json()["data"][1:])

        assert served() == ["rrr-v1"]  # v2 unloaded after the flip
        forward = runner.invoke(app, ["adapters", "activate", "rrr-v2", *common])
        assert forward.exit_code == 0 and "rrr-v2 is active" in forward.stdout, forward.output
        assert served() == ["rrr-v1", "rrr-v2"]  # reloaded before the flip
        missing = runner.invoke(app, ["adapters", "activate", "rrr-v9", *common])
        assert missing.exit_code == 1 and "no adapter named rrr-v9" in missing.output
        (root / "rrr-v1" / "README.md").write_text("tampered")
        refused = runner.invoke(app, ["adapters", "rollback", *common])
        assert refused.exit_code == 1 and "do not match the manifest" in refused.output
        assert "nothing changed" in refused.output
        table = runner.invoke(app, ["adapters", "list", "--database-url", url])
        assert table.stdout.splitlines()[0].startswith("rrr-v2") and "active" in table.stdout.splitlines()[0]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        db.dispose()
