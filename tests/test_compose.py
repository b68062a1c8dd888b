"""docker-compose.yml: the wiring of docs/design.md, checked against the real CLI, and validated by docker-compose.

Static checks parse the YAML (PyYAML) and the Dockerfile: vLLM is the official image at a pinned tag
with LoRA, runtime updating and the hermes tool parser, publishes no port and reserves a GPU; the
adapters volume is mounted at one path on vllm and learner and is the path the learner publishes
to; secrets are required (`${VAR:?}`) and never defaulted; every service is health-checked and
restarts; every flag and RRR_* variable the file uses exists in the code it configures.

`docker-compose config` (Debian's package `docker-compose`, which needs no Docker engine) then
validates the file and its interpolation; `.ci/run` installs it (`make compose-tool`, as root), and
this part skips, saying why, only when the binary is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from api.settings import Settings
from cli import app
from learner.settings import LearnerSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SECRETS = ("RRR_API_KEYS", "RRR_ADMIN_KEYS", "RRR_ENGINE_API_KEY", "POSTGRES_PASSWORD")
LONG_RUNNING = ("vllm", "postgres", "api", "learner")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"][name]
    return service


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{volume name: (container path, mode)} of the named-volume mounts."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *mode = str(entry).split(":")
        out[source] = (target, mode[0] if mode else "rw")
    return out


def _gpus(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = service["deploy"]["resources"]["reservations"]["devices"]
    return devices


def _options(*path: str) -> dict[str, str | None]:
    """{flag: envvar} of a real `rrr` command."""
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt: param.envvar for param in command.params for opt in param.opts if opt.startswith("--")}


def _flags(command: list[str]) -> list[str]:
    return [part.split("=")[0] for part in command if part.startswith("--")]


def test_vllm_is_the_pinned_official_image_with_lora_and_hermes_tools_and_no_published_port(
    compose: dict[str, Any],
) -> None:
    vllm = _service(compose, "vllm")
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", vllm["image"]), vllm["image"]
    assert "ports" not in vllm  # internal only: the engine is reached as http://vllm:8000
    assert vllm["entrypoint"] == ["vllm", "serve"]
    command = vllm["command"]
    flags = _flags(command)
    for flag in ("--enable-lora", "--max-lora-rank", "--enable-auto-tool-choice", "--tool-call-parser"):
        assert flag in flags, flag
    assert "--tool-call-parser=hermes" in command
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"].strip().lower() in ("1", "true")
    assert vllm["environment"]["VLLM_API_KEY"].startswith("${RRR_ENGINE_API_KEY:?")
    assert {"capabilities": ["gpu"], "driver": "nvidia"}.items() <= _gpus(vllm)[0].items()
    # the learner's rank bound and vLLM's --max-lora-rank come from the same variable
    assert "--max-lora-rank=${RRR_MAX_LORA_RANK:-16}" in command
    assert _service(compose, "learner")["environment"]["RRR_MAX_LORA_RANK"] == "${RRR_MAX_LORA_RANK:-16}"


def test_one_adapters_volume_at_one_path_on_vllm_and_learner(compose: dict[str, Any]) -> None:
    vllm, learner, api = (_service(compose, n) for n in ("vllm", "learner", "api"))
    assert "adapters" in compose["volumes"]
    path, _ = _mounts(vllm)["adapters"]
    assert _mounts(learner)["adapters"] == (path, "rw")  # the learner publishes into it
    assert _mounts(vllm)["adapters"] == (path, "ro")  # vLLM loads lora_path as the learner sent it
    assert _mounts(api)["adapters"] == (path, "ro")  # the API verifies folders before an activation
    assert api["environment"]["RRR_ADAPTERS_ROOT"] == path
    command = learner["command"]
    assert command[command.index("--adapters-root") + 1] == path == learner["environment"]["RRR_ADAPTERS_ROOT"]
    assert learner["environment"]["RRR_ENGINE_URLS"] == command[command.index("--engine-url") + 1]
    # the base model vLLM serves is the one the learner trains
    assert vllm["command"][0] == learner["environment"]["RRR_MODEL"]
    assert _mounts(vllm)["hf-cache"] == _mounts(learner)["hf-cache"]


def test_api_and_learner_run_the_real_commands_with_flags_and_variables_the_code_reads(compose: dict[str, Any]) -> None:
    api, learner, migrate = (_service(compose, n) for n in ("api", "learner", "migrate"))
    assert api["command"][:4] == ["rrr", "serve", "--engine-url", "http://vllm:8000"]
    assert set(_flags(api["command"])) <= set(_options("serve"))
    assert api["ports"] and "8000" in str(api["ports"][0])
    settings_vars = {f"RRR_{name.upper()}" for name in Settings.model_fields}
    api_vars = {k for k in api["environment"] if k.startswith("RRR_")}
    assert api_vars <= settings_vars, api_vars - settings_vars
    assert "RRR_MODEL" not in api_vars  # with engine URLs, a local model is a settings error

    assert learner["command"][:3] == ["rrr", "learn", "schedule"]
    schedule = _options("learn", "schedule")
    assert set(_flags(learner["command"])) <= set(schedule)
    read_by_cli = set(
        re.findall(r"os\.environ(?:\.get)?[\[(]\"(RRR_[A-Z_]+)\"", (ROOT / "cli" / "base.py").read_text())
    )
    assert {"RRR_DATABASE_URL", "RRR_ENGINE_API_KEY", "RRR_DATA_DIR"} <= read_by_cli
    learner_vars = {k for k in learner["environment"] if k.startswith("RRR_")}
    known = {f"RRR_{name.upper()}" for name in LearnerSettings.model_fields} | read_by_cli
    assert learner_vars <= known, learner_vars - known
    assert learner["build"]["target"] == "learner" and api["build"]["target"] == "api"
    assert {"capabilities": ["gpu"], "driver": "nvidia"}.items() <= _gpus(learner)[0].items()

    assert migrate["command"] == ["rrr", "db", "upgrade"]
    for name in ("api", "learner"):
        depends = _service(compose, name)["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["vllm"]["condition"] == "service_healthy"


def test_postgres_keeps_its_data_and_every_service_is_health_checked_and_restarts(compose: dict[str, Any]) -> None:
    postgres = _service(compose, "postgres")
    assert _mounts(postgres)["postgres-data"][0] == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name in LONG_RUNNING:
        service = _service(compose, name)
        assert service["restart"] in ("unless-stopped", "always"), name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert ":latest" not in service["image"] and ":" in service["image"], name


def test_secrets_are_required_and_never_defaulted() -> None:
    text = COMPOSE.read_text()
    for var in SECRETS:
        uses = re.findall(r"\$\{" + var + r"(:?[?\-]?)", text)
        assert uses, var
        assert set(uses) == {":?"}, f"{var} must always be ${{{var}:?...}}, found {uses}"
    example = (ROOT / "docker" / "env.example").read_text()
    assert all(re.search(rf"^{var}=", example, re.M) for var in SECRETS)


def test_images_api_without_torch_learner_with_the_ml_extra_both_with_constraints() -> None:
    text = DOCKERFILE.read_text()
    stages = {name: parent for parent, name in re.findall(r"^FROM (\S+) AS (\w+)$", text, re.M)}
    assert stages == {"base": "python:3.11-slim", "api": "base", "learner": "base"}
    api = text.split("FROM base AS api")[1].split("FROM base AS learner")[0]
    learner = text.split("FROM base AS learner")[1]
    assert "pip install -c constraints.txt ." in api and "torch" not in api and "[ml]" not in api
    assert 'pip install -c constraints.txt ".[ml]"' in learner
    assert "USER rrr" in api


def _compose_env(**overrides: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    env.update({var: f"test-{var.lower()}" for var in SECRETS})
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


def _docker_compose(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose is not installed (Debian: apt-get install docker-compose; "
            "or `make compose-tool` as root; CI installs it)"
        )
    no_env_file = tmp_path / "empty.env"  # a developer's .env must not fill in what the test leaves out
    no_env_file.write_text("")
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(no_env_file), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docker_compose_validates_the_file(tmp_path: Path) -> None:
    done = _docker_compose(_compose_env(), tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    services = resolved["services"]
    assert set(services) == {"vllm", "postgres", "migrate", "api", "learner"}
    assert "ports" not in services["vllm"]
    assert services["api"]["environment"]["RRR_API_KEYS"] == "test-rrr_api_keys"
    assert services["vllm"]["environment"]["VLLM_API_KEY"] == "test-rrr_engine_api_key"
    assert (
        services["api"]["environment"]["RRR_DATABASE_URL"]
        == "postgresql://rrr:test-postgres_password@postgres:5432/rrr"
    )
    assert services["api"]["ports"][0]["target"] == 8000


@pytest.mark.parametrize("missing", SECRETS)
def test_docker_compose_refuses_to_start_without_a_secret(missing: str, tmp_path: Path) -> None:
    done = _docker_compose(_compose_env(**{missing: ""}), tmp_path)
    assert done.returncode != 0
    assert f"set {missing}" in done.stderr
