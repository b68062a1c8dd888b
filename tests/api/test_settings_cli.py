"""Settings from the environment and YAML, and `rrr serve` end to end (startup line, refusals, SIGTERM drain)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from api.settings import Settings
from tests.api.conftest import GOOD, MESSAGES, TOOLS
from tests.support.upstream import Script, ScriptedUpstream, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_settings_read_comma_lists_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRR_API_KEYS", " key-one-xyz, key-two-xyz ,")
    monkeypatch.setenv("RRR_ENGINE_URLS", "http://a:8000/v1,http://b:8000")
    monkeypatch.setenv("RRR_MAX_MESSAGES", "7")
    config = tmp_path / "rrr.yaml"
    config.write_text("admin_keys: [admin-key-xyz]\nmax_tools: 3\nmax_messages: 99\ndeadline_s: 12.5\n")
    monkeypatch.setenv("RRR_CONFIG", str(config))
    settings = Settings()
    assert settings.api_keys == ["key-one-xyz", "key-two-xyz"] and settings.admin_keys == ["admin-key-xyz"]
    assert settings.engine_urls == ["http://a:8000/v1", "http://b:8000"]
    assert (settings.max_messages, settings.max_tools, settings.deadline_s) == (7, 3, 12.5)  # env beats YAML
    assert "-xyz" not in repr(settings)
    assert Settings(max_tools=1).max_tools == 1  # arguments beat both
    monkeypatch.setenv("RRR_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="RRR_CONFIG"):
        Settings()
    monkeypatch.delenv("RRR_CONFIG")
    with pytest.raises(ValueError, match="not both"):
        Settings(model="/models/tiny")
    monkeypatch.setenv("RRR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RRR_ENGINE_URLS")
    defaults = Settings()
    assert defaults.resolved_database_url() == "sqlite:///" + str(tmp_path / "data" / "rrr.db")
    assert defaults.resolved_spool_path() == tmp_path / "data" / "spool" / "episodes-8000.jsonl"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0", "--engine-url", "http://127.0.0.1:9/v1"], "refusing to listen on '0.0.0.0'"),
        ([], "no engine"),
        (["--model", "m", "--engine-url", "http://x"], "not both"),
        (["--engine-url", "http://x", "--api-key-env", "NO_SUCH_VARIABLE_FOR_RRR"], "NO_SUCH_VARIABLE_FOR_RRR"),
        (["--engine-url", "http://x", "--port", "99999"], "port"),
    ],
)
def test_serve_refuses_bad_setups_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    import cli

    env = {
        "RRR_API_KEYS": "",
        "RRR_ADMIN_KEYS": "",
        "RRR_ENGINE_URLS": "",
        "RRR_MODEL": "",
        "RRR_DATA_DIR": str(tmp_path),
    }
    result = CliRunner().invoke(cli.app, ["serve", *args], env=env)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_rrr_serve_answers_and_drains_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with ScriptedUpstream(Script(answer=[GOOD], delay_s=0.8)) as upstream:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MY_KEYS": "sk-cli-test",
            "RRR_ADMIN_KEYS": "sk-cli-admin",
            "RRR_BASE_MODEL_NAME": "base",
        }
        env.pop("RRR_CONFIG", None)
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import cli; cli.main()",
                "serve",
                "--engine-url",
                upstream.url,
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
                "--api-key-env",
                "MY_KEYS",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith(f"rrr serving on http://127.0.0.1:{port}"), line
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli-test", max_retries=0)
            first = client.chat.completions.create(model="rrr", messages=MESSAGES, tools=TOOLS)  # type: ignore[arg-type]
            assert first.choices[0].message.tool_calls

            results: list[object] = []

            def in_flight() -> None:
                results.append(
                    client.chat.completions.create(
                        model="rrr",
                        messages=MESSAGES,  # type: ignore[arg-type]
                        tools=TOOLS,
                    )
                )  # type: ignore[arg-type]

            worker = threading.Thread(target=in_flight)
            worker.start()
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            worker.join(10)
            assert len(results) == 1  # the in-flight request was answered, not cut off
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    with sqlite3.connect(tmp_path / "rrr.db") as db:
        assert db.execute("SELECT count(*) FROM episodes WHERE status = 'first_ok'").fetchone()[0] == 2


def test_serve_refuses_a_database_without_the_schema_and_serves_after_upgrade(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    sqlite3.connect(tmp_path / "shared.db").close()  # reachable, but never migrated
    env = {**os.environ, "RRR_AUTO_MIGRATE": "false", "RRR_DATA_DIR": str(tmp_path / "data")}
    with ScriptedUpstream(Script(answer=[GOOD])) as up:
        args = [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--engine-url",
            up.url,
            "--database-url",
            db,
            "--port",
            str(free_port()),
        ]
        refused = subprocess.run(
            args, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 1
        assert "rrr db upgrade" in refused.stderr.splitlines()[-1]
        assert "Traceback" not in refused.stderr  # an expected startup failure is one line, not a stack
        upgraded = subprocess.run(
            [sys.executable, "-m", "cli", "db", "upgrade", "--database-url", db],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        with sqlite3.connect(tmp_path / "shared.db") as conn:
            tables = {row[0] for row in conn.execute("select name from sqlite_master where type='table'")}
        assert {"episodes", "attempts", "adapters", "training_runs", "leases"} <= tables


def test_serve_with_no_engine_answering_fails_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "RRR_DATA_DIR": str(tmp_path), "RRR_ENGINE_STARTUP_TIMEOUT_S": "1"}
    dead = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--engine-url", dead, "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "rrr could not start: no engine listed a base model" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
