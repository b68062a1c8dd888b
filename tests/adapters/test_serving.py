"""adapters/: the folder check, and verify → load → probe → flip for activate and rollback (R19).

Folders are written by the learner's own writer (`adapters.folder.write_adapter_folder`), so the
check is proven against exactly what gets published. The engines are `VLLMEngine`s in an
`EnginePool` over real HTTP to two scripted upstreams that speak vLLM's chat and runtime-LoRA
routes; the registry is a real SQLite database migrated by Alembic. No torch needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from adapters import serving
from adapters.folder import UnsafeAdapter, verify_adapter_dir, write_adapter_folder
from adapters.serving import ActivationError
from engines.pool import EnginePool
from engines.vllm import VLLMEngine
from store import repos
from store.db import make_engine, make_session_factory, upgrade
from tests.support.upstream import Script, ScriptedUpstream, text

Factory = Callable[[], Session]


def trained_adapter(tmp: Path) -> Path:
    """What training leaves behind (content is irrelevant to the checks: nothing here parses weights)."""
    source = tmp / "trained"
    source.mkdir(exist_ok=True)
    (source / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    (source / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (source / "README.md").write_text("a tiny adapter")
    return source


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "adapters"


@pytest.fixture
def published(tmp_path: Path, root: Path) -> tuple[Path, str]:
    """`<root>/rrr-v1` as the publisher writes it, and its manifest's sha256."""
    return write_adapter_folder(trained_adapter(tmp_path), root, 1, base_model="base")


# --- verify_adapter_dir (R16) ----------------------------------------------------------------------


def refused(path: Any, root: Path, match: str, **kw: Any) -> str:
    with pytest.raises(UnsafeAdapter, match=match) as info:
        verify_adapter_dir(path, root, **kw)
    return str(info.value)


def test_accepts_exactly_what_the_publisher_writes(published: tuple[Path, str], root: Path) -> None:
    folder, digest = published
    verified = verify_adapter_dir(folder, root, manifest_sha256=digest)
    assert verified.name == "rrr-v1" and verified.path == str(folder.resolve())
    assert verified.manifest_sha256 == digest == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    assert set(verified.manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert verify_adapter_dir("rrr-v1", root, manifest_sha256=digest).path == verified.path  # relative to the root
    (folder / "README.md").write_text("added later")
    refused(folder, root, "do not match the manifest", manifest_sha256=digest)


def test_refuses_tampered_files_and_rewritten_manifests(published: tuple[Path, str], root: Path) -> None:
    folder, digest = published
    copy = root / "rrr-v7"
    shutil.copytree(folder, copy)
    verify_adapter_dir(copy, root)
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    refused(copy, root, "do not match the manifest")

    # A manifest rewritten to match tampered files is caught by the registry's hash of the manifest.
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["adapter_model.safetensors"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    verify_adapter_dir(copy, root)
    refused(copy, root, "differs from the one recorded", manifest_sha256=digest)

    (copy / "extra.json").write_text("{}")
    assert "extra ['extra.json']" in refused(copy, root, "files differ from the manifest")
    (copy / "extra.json").unlink()
    (copy / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    refused(copy, root, "no pickles")
    (copy / "adapter_model.bin").unlink()
    (copy / "README.md").unlink()
    assert "missing ['README.md']" in refused(copy, root, "files differ from the manifest")


def test_refuses_manifests_that_are_not_ours(published: tuple[Path, str], root: Path) -> None:
    folder, _ = published
    manifest = json.loads((folder / "manifest.json").read_text())
    for bad in ([manifest], {**manifest, "format": "other/1"}, {**manifest, "files": ["README.md"]}):
        (folder / "manifest.json").write_text(json.dumps(bad))
        refused(folder, root, "not an rrr adapter manifest")
    files = {k: v for k, v in manifest["files"].items() if k != "adapter_config.json"}
    (folder / "adapter_config.json").unlink()
    (folder / "manifest.json").write_text(json.dumps({**manifest, "files": files}))
    refused(folder, root, r"lists no adapter_config\.json")
    (folder / "manifest.json").write_text("{not json")
    refused(folder, root, "no readable manifest")


def test_refuses_symlinks_dotdot_and_folders_outside_the_root(
    published: tuple[Path, str], root: Path, tmp_path: Path
) -> None:
    folder, digest = published
    outside = tmp_path / "outside" / "rrr-v8"
    shutil.copytree(folder, outside)
    (root / "rrr-v8").symlink_to(outside, target_is_directory=True)
    refused(root / "rrr-v8", root, "symlink")
    refused(outside, root, "not a folder directly under the adapters root")
    refused(root / ".." / "outside" / "rrr-v8", root, r"must not contain '\.\.'")
    refused(str(root) + "/rrr-v1/../rrr-v1", root, r"must not contain '\.\.'")
    (root / "sub").mkdir()
    shutil.copytree(folder, root / "sub" / "rrr-v1")
    refused(root / "sub" / "rrr-v1", root, "not a folder directly under")
    shutil.copytree(folder, root / "latest")
    refused(root / "latest", root, r"not a published adapter folder \(rrr-v<N>\)")

    (root / "rrr-v9").mkdir()
    (root / "rrr-v9" / "adapter_config.json").symlink_to(folder / "adapter_config.json")
    refused(root / "rrr-v9", root, "no readable manifest")  # no manifest at all
    shutil.copy2(folder / "manifest.json", root / "rrr-v9" / "manifest.json")
    refused(root / "rrr-v9", root, "is not a regular file")
    (root / "rrr-v10").mkdir()
    (root / "rrr-v10" / "manifest.json").symlink_to(folder / "manifest.json")
    refused(root / "rrr-v10", root, "manifest.json is not a regular file")
    refused(root / "not-an-adapter", root, "no adapter folder")
    refused(folder, tmp_path / "missing-root", "the adapters root does not exist")
    verify_adapter_dir(folder, root, manifest_sha256=digest)


def test_messages_name_folders_and_files_never_full_paths(
    published: tuple[Path, str], root: Path, tmp_path: Path
) -> None:
    """R14: these messages reach API clients."""
    folder, digest = published
    (folder / "README.md").write_text("tampered")
    messages = [
        refused(folder, root, "do not match", manifest_sha256=digest),
        refused(tmp_path / "elsewhere" / "rrr-v1", root, "no adapter folder"),
        refused(root / ".." / "x", root, r"\.\."),
    ]
    for message in messages:
        assert str(tmp_path) not in message and "/" not in message.replace("rrr-v1/README.md", "")


# --- prepare, activate, rollback (R19) ----------------------------------------------------------------


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[Factory]:
    url = f"sqlite:///{tmp_path / 'rrr.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def upstreams() -> Iterator[tuple[ScriptedUpstream, ScriptedUpstream]]:
    with (
        ScriptedUpstream(Script(answer=[text("OK")]), lora=True) as a,
        ScriptedUpstream(Script(answer=[text("OK")]), lora=True) as b,
    ):
        yield a, b


def register(
    session_factory: Factory, tmp_path: Path, root: Path, *versions: int, status: str = "candidate"
) -> dict[str, Path]:
    source = trained_adapter(tmp_path)
    folders = {}
    with session_factory() as session, session.begin():
        for version in versions:
            folder, digest = write_adapter_folder(source, root, version, base_model="base")
            repos.create_adapter(
                session,
                name=f"rrr-v{version}",
                version=version,
                path=str(folder),
                base_model="base",
                status=status,
                manifest_sha256=digest,
            )
            folders[f"rrr-v{version}"] = folder
    return folders


def active_name(session_factory: Factory) -> str | None:
    with session_factory() as session:
        adapter = repos.get_active_adapter(session)
        return adapter.name if adapter else None


def scenario(ups: tuple[ScriptedUpstream, ...], body: Callable[[EnginePool], Any]) -> Any:
    async def go() -> Any:
        pool = EnginePool([VLLMEngine(up.url, timeout=10, name=f"r{i}") for i, up in enumerate(ups)])
        try:
            return await body(pool)
        finally:
            await pool.aclose()

    return asyncio.run(go())


def probes(up: ScriptedUpstream) -> list[dict[str, Any]]:
    return [r for r in up.requests if r.get("model", "").startswith("rrr-v")]


def test_activate_loads_and_probes_every_replica_before_the_flip(
    session_factory: Factory, tmp_path: Path, root: Path, upstreams: tuple[ScriptedUpstream, ...]
) -> None:
    folders = register(session_factory, tmp_path, root, 1, 2)
    kw: dict[str, Any] = {"session_factory": session_factory, "adapters_root": root}

    async def body(pool: EnginePool) -> None:
        flip = await serving.activate("rrr-v1", engines=pool, **kw)
        assert flip.active is not None and flip.active.name == "rrr-v1" and flip.active.status == "active"
        assert flip.replaced is None and flip.changed
        for up in upstreams:
            assert up.adapters == {"rrr-v1": str(folders["rrr-v1"].resolve())}
            [probe] = probes(up)
            assert probe["model"] == "rrr-v1" and probe["temperature"] == 0.0 and probe["max_tokens"] == 16
        flip = await serving.activate("rrr-v2", engines=pool, **kw)
        assert flip.active is not None and flip.active.name == "rrr-v2" and flip.replaced == "rrr-v1"
        assert sorted(upstreams[1].adapters) == ["rrr-v1", "rrr-v2"]  # the replaced one stays loaded
        again = await serving.activate("rrr-v2", engines=pool, **kw)
        assert not again.changed and again.replaced is None and again.active is not None
        with pytest.raises(repos.AdapterNotFound):
            await serving.activate("rrr-v9", engines=pool, **kw)

    scenario(upstreams, body)
    assert active_name(session_factory) == "rrr-v2"
    with session_factory() as session:
        assert {a.name: a.status for a in repos.list_adapters(session)} == {"rrr-v1": "retired", "rrr-v2": "active"}


def test_a_failed_load_or_probe_on_one_replica_changes_nothing(
    session_factory: Factory, tmp_path: Path, root: Path, upstreams: tuple[ScriptedUpstream, ...]
) -> None:
    register(session_factory, tmp_path, root, 1, 2)
    a, b = upstreams
    kw: dict[str, Any] = {"session_factory": session_factory, "adapters_root": root}

    async def body(pool: EnginePool) -> None:
        await serving.activate("rrr-v1", engines=pool, **kw)
        b.fail_loads = True
        with pytest.raises(ActivationError, match=r"rrr-v2 cannot serve: load failed \(500") as info:
            await serving.activate("rrr-v2", engines=pool, **kw)
        assert info.value.kind == "cannot_serve" and info.value.name == "rrr-v2"
        assert sorted(a.adapters) == sorted(b.adapters) == ["rrr-v1"]  # loaded on a, then unloaded again
        b.fail_loads = False
        b.script.answer = ["error:500:probe exploded"]
        with pytest.raises(ActivationError, match="probe failed") as info:
            await serving.activate("rrr-v2", engines=pool, **kw)
        assert info.value.kind == "cannot_serve"
        assert sorted(a.adapters) == sorted(b.adapters) == ["rrr-v1"]  # both loads undone

    scenario(upstreams, body)
    assert active_name(session_factory) == "rrr-v1"


def test_activate_refuses_rejected_and_unsafe_adapters_before_any_engine_call(
    session_factory: Factory, tmp_path: Path, root: Path, upstreams: tuple[ScriptedUpstream, ...]
) -> None:
    folders = register(session_factory, tmp_path, root, 1)
    register(session_factory, tmp_path, root, 2, status="rejected")
    (folders["rrr-v1"] / "adapter_model.safetensors").write_bytes(b"evil")
    kw: dict[str, Any] = {"session_factory": session_factory, "adapters_root": root}

    async def body(pool: EnginePool) -> None:
        with pytest.raises(ActivationError, match="rejected") as info:
            await serving.activate("rrr-v2", engines=pool, **kw)
        assert info.value.kind == "rejected"
        with pytest.raises(ActivationError, match="do not match the manifest") as info:
            await serving.activate("rrr-v1", engines=pool, **kw)
        assert info.value.kind == "unsafe" and str(root) not in str(info.value)

    scenario(upstreams, body)
    assert all(up.admin_calls == [] and up.requests == [] for up in upstreams)
    assert active_name(session_factory) is None


def test_rollback_reloads_its_target_first_then_flips_back_to_the_base_model(
    session_factory: Factory, tmp_path: Path, root: Path, upstreams: tuple[ScriptedUpstream, ...]
) -> None:
    register(session_factory, tmp_path, root, 1, 2)
    kw: dict[str, Any] = {"session_factory": session_factory, "adapters_root": root}

    async def body(pool: EnginePool) -> None:
        nothing = await serving.rollback(engines=pool, **kw)
        assert not nothing.changed and nothing.active is None and nothing.replaced is None
        await serving.activate("rrr-v1", engines=pool, **kw)
        await serving.activate("rrr-v2", engines=pool, **kw)
        await serving.unload_everywhere(pool, "rrr-v1")  # drained meanwhile
        back = await serving.rollback(engines=pool, **kw)
        assert back.changed and back.replaced == "rrr-v2"
        assert back.active is not None and back.active.name == "rrr-v1"
        for up in upstreams:
            assert sorted(up.adapters) == ["rrr-v1", "rrr-v2"]  # reloaded before the flip
            assert [p["model"] for p in probes(up)] == ["rrr-v1", "rrr-v2", "rrr-v1"]
        base = await serving.rollback(engines=pool, **kw)
        assert base.changed and base.active is None and base.replaced == "rrr-v1"

    scenario(upstreams, body)
    assert active_name(session_factory) is None


def test_a_rollback_whose_plan_moved_meanwhile_changes_nothing(
    session_factory: Factory, tmp_path: Path, root: Path
) -> None:
    """While the target is probed, another admin activates a third adapter: the rollback must not commit."""
    register(session_factory, tmp_path, root, 1, 2, 3)
    kw: dict[str, Any] = {"session_factory": session_factory, "adapters_root": root}

    def responder(body: dict[str, Any]) -> Any:
        if body.get("model") == "rrr-v1" and active_name(session_factory) == "rrr-v2":
            with session_factory() as session, session.begin():
                repos.activate_adapter(session, "rrr-v3")
        return text("OK")

    with ScriptedUpstream(Script(answer=[text("OK")]), lora=True) as up:

        async def body(pool: EnginePool) -> None:
            await serving.activate("rrr-v1", engines=pool, **kw)
            await serving.activate("rrr-v2", engines=pool, **kw)
            up.script.responder = responder
            with pytest.raises(ActivationError, match="active adapter changed") as info:
                await serving.rollback(engines=pool, **kw)
            assert info.value.kind == "conflict"

        scenario((up,), body)
    assert active_name(session_factory) == "rrr-v3"


def test_an_unload_that_races_the_flip_is_undone_at_once(session_factory: Factory, tmp_path: Path, root: Path) -> None:
    """A drain of v1 that unloads it between its probe and the flip: v1 is active, so it is loaded again."""
    register(session_factory, tmp_path, root, 1)

    with ScriptedUpstream(Script(answer=[text("OK")]), lora=True) as up:

        def responder(body: dict[str, Any]) -> Any:
            up.adapters.pop(str(body.get("model")), None)
            return text("OK")

        up.script.responder = responder

        async def body(pool: EnginePool) -> None:
            await serving.activate("rrr-v1", engines=pool, session_factory=session_factory, adapters_root=root)

        scenario((up,), body)
        assert list(up.adapters) == ["rrr-v1"]
        assert up.admin_calls == ["/v1/load_lora_adapter", "/v1/load_lora_adapter"]
    assert active_name(session_factory) == "rrr-v1"
