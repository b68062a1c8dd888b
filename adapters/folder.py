"""The adapter folder format: names, the manifest, writing a folder and checking one before a load.

One definition for the writer (`adapters.serving.publish_adapter`, via `write_adapter_folder`) and
every loader (`adapters.serving.prepare`, the learner's gate, the API's activate/rollback), so what
is written is exactly what is accepted. Also the fsync helpers that every crash-safe file write of
rrr uses (the learner's checkpoints included).

* A published folder is `<adapters root>/rrr-v<N>/` holding `adapter_config.json`,
  `adapter_model.safetensors` (optionally a README) and `manifest.json` (format `rrr-adapter/1`,
  the sha256 and size of every file). It appears by one rename of a complete, fsync'd temp folder
  `.rrr-v<N>.tmp`, or not at all.
* `verify_adapter_dir`: only folders the learner built under the adapters root load. The resolved
  folder is a direct child of the resolved root named `rrr-v<N>` (no `..` in the given path, the
  folder not a symlink), holds regular files only, exactly those its manifest lists, no pickle
  weights, every size and sha256 matches, and the manifest is the one the registry row recorded.
  Messages name the folder and its files, never a full path, so they can reach API clients.
* `check_adapter_source`: what a trained adapter folder must hold to be published or evaluated.

Pure file operations: no engine, no database, no torch. What vLLM itself refuses to load (rank,
target modules, DoRA...) is the engines' business (`engines.wire.validate_adapter_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ADAPTER_PREFIX = "rrr-v"
FOLDER_RE = re.compile(r"^rrr-v([1-9][0-9]{0,8})$")
TMP_RE = re.compile(r"^\.rrr-v([1-9][0-9]{0,8})\.tmp$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "rrr-adapter/1"
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
OPTIONAL_FILES = ("README.md",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5")


class UnsafeAdapter(ValueError):
    """An adapter folder that must not be loaded (outside the root, tampered, pickle weights...)."""


@dataclass(frozen=True)
class VerifiedAdapter:
    """An adapter folder that passed `verify_adapter_dir`: its absolute path and manifest."""

    name: str
    path: str
    manifest: dict[str, Any]
    manifest_sha256: str


# --- durable file operations --------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (a rename inside it, a new file); quiet where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` by temp file + fsync + rename: old or new contents, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every folder bottom-up, of a tree about to be renamed into place."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(path)
    fsync_dir(root)


def remove_tree(path: Path) -> None:
    """Delete a folder without ever leaving a half-deleted one under its own name."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- names and versions -------------------------------------------------------------------------


def adapter_name(version: int) -> str:
    """The registry name and folder name of a version: `rrr-v<version>`."""
    return f"{ADAPTER_PREFIX}{version}"


def folder_versions(root: Path) -> dict[int, Path]:
    """Versions present under `root`, as published folders or leftover temp folders."""
    found: dict[int, Path] = {}
    if root.is_dir():
        for entry in root.iterdir():
            match = FOLDER_RE.match(entry.name) or TMP_RE.match(entry.name)
            if match:
                found[int(match.group(1))] = entry
    return found


# --- checking -----------------------------------------------------------------------------------


def verify_adapter_dir(
    path: str | os.PathLike[str], adapters_root: str | os.PathLike[str], *, manifest_sha256: str | None = None
) -> VerifiedAdapter:
    """Check an adapter folder before anything loads it (R16); raises `UnsafeAdapter` with the reason.

    `path` is absolute or relative to the root. With `manifest_sha256` (the registry's copy) the
    manifest itself must be unchanged, so a manifest rewritten to match tampered files is caught.
    """
    raw = Path(path)
    if ".." in raw.parts:
        raise UnsafeAdapter("adapter paths must not contain '..'")
    try:
        root = Path(adapters_root).resolve(strict=True)
    except OSError:
        raise UnsafeAdapter("the adapters root does not exist (or is not mounted here)") from None
    given = raw if raw.is_absolute() else root / raw
    if given.is_symlink():
        raise UnsafeAdapter(f"{raw.name} is a symlink; adapter folders must be real folders under the root")
    try:
        real = given.resolve(strict=True)
    except OSError:
        raise UnsafeAdapter(f"no adapter folder {raw.name} under the adapters root") from None
    if real.parent != root:
        raise UnsafeAdapter(f"{raw.name} is not a folder directly under the adapters root")
    if not FOLDER_RE.match(real.name) or not real.is_dir():
        raise UnsafeAdapter(f"{real.name} is not a published adapter folder (rrr-v<N>)")
    manifest_path = real / MANIFEST
    if manifest_path.is_symlink():
        raise UnsafeAdapter(f"{real.name}/{MANIFEST} is not a regular file")
    try:
        manifest_raw = manifest_path.read_bytes()
        manifest = json.loads(manifest_raw)
    except (OSError, ValueError):
        raise UnsafeAdapter(f"{real.name} has no readable {MANIFEST}") from None
    digest = hashlib.sha256(manifest_raw).hexdigest()
    if manifest_sha256 is not None and digest != manifest_sha256:
        raise UnsafeAdapter(f"{real.name}: {MANIFEST} differs from the one recorded at publish time")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UnsafeAdapter(f"{real.name}: {MANIFEST} is not an rrr adapter manifest")
    try:
        _check_files(real, files)
    except OSError:
        raise UnsafeAdapter(f"{real.name}: its files cannot be read") from None
    return VerifiedAdapter(name=real.name, path=str(real), manifest=manifest, manifest_sha256=digest)


def _check_files(real: Path, files: dict[str, Any]) -> None:
    present: dict[str, Path] = {}
    for entry in real.iterdir():
        if entry.name == MANIFEST:
            continue
        if entry.is_symlink() or not entry.is_file():
            raise UnsafeAdapter(f"{real.name}/{entry.name} is not a regular file")
        if entry.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeAdapter(f"{real.name}/{entry.name}: only safetensors weights are loaded (no pickles)")
        present[entry.name] = entry
    if set(present) != set(files):
        extra, missing = sorted(set(present) - set(files)), sorted(set(files) - set(present))
        raise UnsafeAdapter(f"{real.name}: files differ from the manifest (extra {extra}, missing {missing})")
    for name in REQUIRED_FILES:
        if name not in files:
            raise UnsafeAdapter(f"{real.name}: the manifest lists no {name}")
    for name, entry in present.items():
        expected = files[name]
        if (
            not isinstance(expected, dict)
            or entry.stat().st_size != expected.get("size")
            or sha256_file(entry) != expected.get("sha256")
        ):
            raise UnsafeAdapter(f"{real.name}/{name}: contents do not match the manifest")


def check_adapter_source(source: str | os.PathLike[str]) -> list[Path]:
    """The files of a trained adapter to publish (or evaluate); raises `UnsafeAdapter` for pickle
    weights anywhere in the folder, symlinked adapter files, or a missing config or safetensors file."""
    source = Path(source)
    if not source.is_dir():
        raise UnsafeAdapter(f"{source.name} is not an adapter folder")
    for entry in sorted(source.rglob("*")):
        if entry.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeAdapter(f"refusing {entry.name}: only safetensors weights are published (no pickles)")
    picked = []
    for name in (*REQUIRED_FILES, *OPTIONAL_FILES):
        entry = source / name
        if entry.is_symlink():
            raise UnsafeAdapter(f"refusing {name}: it is a symlink")
        if entry.is_file():
            picked.append(entry)
        elif name in REQUIRED_FILES:
            raise UnsafeAdapter(f"the adapter folder has no {name}")
    return picked


# --- writing ------------------------------------------------------------------------------------


def write_adapter_folder(
    source: str | os.PathLike[str],
    adapters_root: str | os.PathLike[str],
    version: int,
    *,
    base_model: str,
    run_id: str | None = None,
) -> tuple[Path, str]:
    """Steps 1 of the protocol: `<root>/rrr-v<version>/` with its manifest; returns (path, manifest sha256).

    The folder appears by one rename of a complete, fsync'd temp folder, or not at all.
    """
    root = Path(adapters_root)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    name = adapter_name(version)
    final = root / name
    if final.exists() or final.is_symlink():
        raise FileExistsError(f"{name} already exists under the adapters root")
    files = check_adapter_source(Path(source))
    tmp = root / f".{name}.tmp"
    if tmp.exists() or tmp.is_symlink():
        shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
    tmp.mkdir()
    try:
        entries: dict[str, dict[str, Any]] = {}
        for src in files:
            dst = tmp / src.name
            with src.open("rb") as fin, dst.open("wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            entries[src.name] = {"sha256": sha256_file(dst), "size": dst.stat().st_size}
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "version": version,
            "base_model": base_model,
            "run_id": run_id,
            "created_at": datetime.now(UTC).isoformat(),
            "files": entries,
        }
        raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
        with (tmp / MANIFEST).open("wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    return final, hashlib.sha256(raw).hexdigest()
