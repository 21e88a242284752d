"""The command line that creates orgs, users and properties, and seeds the demo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from app_support import SEED_EXPENSE
from starlette.testclient import TestClient

from streamcore_server.__main__ import main
from streamcore_server.main import create_app
from streamcore_server.settings import Settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Settings:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))
    return Settings(database_url=url, data_dir=str(tmp_path / "var"))


def can_log_in(settings: Settings, email: str, password: str) -> bool:
    with TestClient(create_app(settings)) as client:
        response = client.post("/auth/login", json={"email": email, "password": password})
        return response.status_code == 200


def test_create_org_user_property(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create-org", "--name", "Acme"]) == 0
    assert capsys.readouterr().out.strip() == "org 1"
    assert main(["create-property", "--org", "Acme", "--name", "Main St"]) == 0
    assert capsys.readouterr().out.strip() == "property 1"
    assert (
        main(["create-user", "--email", "Ann@Acme.test", "--org", "1", "--password", "s3cret-pass"])
        == 0
    )
    assert capsys.readouterr().out.strip() == "user 1"
    assert can_log_in(env, "ann@acme.test", "s3cret-pass")


def test_create_user_prompts_without_echo(
    env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["create-org", "--name", "Acme"])
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return "prompted-password"

    monkeypatch.setattr("getpass.getpass", getpass)
    assert main(["create-user", "--email", "bo@acme.test", "--org", "Acme"]) == 0
    out = capsys.readouterr()
    assert prompts == ["Password: "]
    assert "prompted-password" not in out.out + out.err
    assert can_log_in(env, "bo@acme.test", "prompted-password")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["create-user", "--email", "x@y.z", "--org", "Nope", "--password", "longenough"],
            "no org",
        ),
        (["create-property", "--org", "42", "--name", "P"], "no org"),
        (["create-org", "--name", "Acme"], "already exists"),
        (
            ["create-user", "--email", "x@y.z", "--org", "Acme", "--password", "short"],
            "8 characters",
        ),
        (
            ["create-user", "--email", "not-an-email", "--org", "Acme", "--password", "longenough"],
            "email",
        ),
    ],
)
def test_bad_requests_fail_with_a_message(
    env: Settings, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    main(["create-org", "--name", "Acme"])
    capsys.readouterr()
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_duplicate_email_is_refused(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    main(["create-org", "--name", "Acme"])
    args = ["create-user", "--email", "a@acme.test", "--org", "Acme", "--password", "longenough"]
    assert main(args) == 0
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err


def test_seed_demo_is_idempotent_and_matches_the_guide(
    env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["seed-demo"]) == 0
    assert main(["seed-demo"]) == 0
    assert capsys.readouterr().out.splitlines() == ["seeded the demo", "the demo is already there"]
    with TestClient(create_app(env)) as client:
        token = client.post(
            "/auth/login", json={"email": "user@example.com", "password": "changeme"}
        ).json()["accessToken"]
        response = client.post(
            "/v1/finance/expenses",
            headers={"Authorization": f"Bearer {token}"},
            json=SEED_EXPENSE,
        )
        assert response.status_code == 201, response.text


def test_a_bad_setting_fails_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAX_BODY_BYTES", "lots")
    assert main(["seed-demo"]) == 2
    assert "MAX_BODY_BYTES" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_on_a_port_in_use_exits_at_once_with_a_message(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import time

    from processes import free_port, server_env

    port = free_port()
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        env = {**os.environ, **server_env(tmp_path), "HOST": "127.0.0.1", "PORT": str(port)}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "streamcore_server", "serve"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "var" / "streamcore.db").exists()  # nothing started before the bind
    assert took < 30  # an interpreter start, not a 20 s wait


def test_the_console_script_is_the_same_program_as_python_m_app() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("streamcore")
    assert script.is_file(), "pip install -e . installs the `streamcore` console script"
    via_script = subprocess.run(
        [str(script), "settings-table"], capture_output=True, text=True, check=True
    ).stdout
    via_module = subprocess.run(
        [sys.executable, "-m", "streamcore_server", "settings-table"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert via_script == via_module and "REALTIME_HISTORY_EVENTS" in via_script
