"""docker-compose.yml runs what `eye-model stack up --profile production` runs.

Docker is not needed: the file is parsed, its variables are resolved the way Compose
resolves them, and its commands, ports, environment and auth configuration are compared
with the Python builders of the stack.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from eye_model.config import (
    DEFAULT_EXPERIMENT_NAME,
    DEFAULT_MODEL_NAME,
    METRICS_PORT,
    SERVING_PORT,
    TRACKING_PORT,
)
from eye_model.stack import (
    BASIC_AUTH_APP,
    TrackingConfig,
    build_serve_command,
    build_tracking_command,
    mlflow_executable,
    render_auth_config,
)
from eye_model.stack.supervisor import supervised_command
from eye_model.uris import split_password

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}``, ``${NAME?error}``.
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
#: The secrets a user must provide; Compose refuses to start without them.
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "GRAFANA_ADMIN_PASSWORD",
}


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Resolve Compose variables in ``value`` (recursively) from ``env``.

    A required variable (``:?``) that is not in ``env`` becomes ``<NAME>``.
    """
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        if env.get(name):
            return env[name]
        if op.endswith("-"):
            return arg
        if op.endswith("?"):
            return f"<{name}>"
        return ""

    return VARIABLE.sub(resolve, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _without_executable(command: list[str]) -> list[str]:
    return command[len(mlflow_executable()) :]


def test_the_services_on_the_brief_ports(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "tracking", "model", "prometheus", "grafana"}
    assert services["tracking"]["ports"] == [f"{TRACKING_PORT}:{TRACKING_PORT}"]
    assert services["model"]["ports"] == [
        f"{SERVING_PORT}:{SERVING_PORT}",
        f"{METRICS_PORT}:{METRICS_PORT}",
    ]
    assert "ports" not in services["postgres"]  # the database is not published on the host
    assert services["tracking"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["model"]["depends_on"]["tracking"]["condition"] == "service_healthy"


def test_tracking_command_is_the_stacks(services: dict[str, Any]) -> None:
    command = interpolate(services["tracking"]["command"])
    assert command[0] == "mlflow"
    value = dict(zip(command, command[1:], strict=False))
    backend = value["--backend-store-uri"]
    assert backend.startswith("postgresql") and "@postgres:5432/" in backend
    assert split_password(backend)[1] is None  # the password is in PGPASSWORD, not here
    expected = build_tracking_command(
        backend_store_uri=backend,
        artifacts_destination="/mlflow/artifacts",
        port=TRACKING_PORT,
        host="0.0.0.0",
        app_name=BASIC_AUTH_APP,
        workers=1,  # more would stall keep-alive requests (uvicorn issue 3149)
        allowed_hosts=f"tracking:{TRACKING_PORT},localhost:*,127.0.0.1:*",
    )
    assert command[1:] == _without_executable(expected)
    assert "--serve-artifacts" in command
    # The artifacts folder and the auth database live on volumes, not in the container.
    mounts = dict(v.split(":")[::-1] for v in services["tracking"]["volumes"])
    assert "/mlflow/artifacts" in mounts
    assert "/mlflow/auth" in mounts


def test_model_command_is_the_stacks_supervised_server(services: dict[str, Any]) -> None:
    command = interpolate(services["model"]["command"])
    serve = build_serve_command(
        f"models:/{DEFAULT_MODEL_NAME}/Production",
        port=SERVING_PORT,
        host="0.0.0.0",
        env_manager="local",
        workers=1,
    )
    expected = supervised_command(
        ["mlflow", *_without_executable(serve)],
        name="model server",
        health_url=f"http://127.0.0.1:{SERVING_PORT}/ping",
    )
    assert expected[0] == sys.executable
    assert command == ["python", *expected[1:]]
    # Inside the container, an init process forwards `docker compose stop` to it.
    assert services["model"]["init"] is True
    chosen = interpolate(
        services["model"]["command"], {"MLFLOW_MODEL_NAME": "other", "MODEL_STAGE": "Staging"}
    )
    assert "models:/other/Staging" in chosen


def test_model_server_reaches_the_tracking_server_with_credentials_from_env(
    services: dict[str, Any],
) -> None:
    env = services["model"]["environment"]
    assert env["MLFLOW_TRACKING_URI"] == f"http://tracking:{TRACKING_PORT}"
    assert env["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_TRACKING_USERNAME:-admin}"
    assert env["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_TRACKING_PASSWORD:?")
    assert interpolate(env["MLFLOW_EXPERIMENT_NAME"]) == DEFAULT_EXPERIMENT_NAME
    assert interpolate(env["ENABLE_MLFLOW_TRACKING"]) == "true"
    # The tracking server answers the Host header the model server sends.
    allowed = interpolate(services["tracking"]["command"])
    assert f"tracking:{TRACKING_PORT}" in allowed[allowed.index("--allowed-hosts") + 1].split(",")


def test_secrets_only_come_from_the_environment(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    required = {m["name"] for m in VARIABLE.finditer(COMPOSE.read_text()) if m["op"] == ":?"}
    assert required == REQUIRED_SECRETS
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY", re.IGNORECASE)
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key) and value is not None:
                assert VARIABLE.fullmatch(str(value)), f"{name}: {key} is hard-coded"
    # Every URI in the file is free of user:password@.
    text = COMPOSE.read_text()
    assert not re.search(r"://[^\s/@:]+:[^\s/@]+@", text)
    # The database password the tracking server uses is the one PostgreSQL was created with.
    assert (
        services["tracking"]["environment"]["PGPASSWORD"]
        == (services["postgres"]["environment"]["POSTGRES_PASSWORD"])
    )
    assert services["tracking"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith(
        "${MLFLOW_TRACKING_PASSWORD:?"
    )
    postgres = services["postgres"]["environment"]
    backend = interpolate(services["tracking"]["command"])
    uri = backend[backend.index("--backend-store-uri") + 1]
    assert uri.endswith(f"://{postgres['POSTGRES_USER']}@postgres:5432/{postgres['POSTGRES_DB']}")


def test_auth_configuration_is_the_stacks_without_the_password(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    mount = services["tracking"]["configs"][0]
    assert services["tracking"]["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == mount["target"]
    content = interpolate(compose["configs"][mount["source"]]["content"])
    ours = render_auth_config(
        TrackingConfig(
            profile="production",
            app_name=BASIC_AUTH_APP,
            auth_db_uri="sqlite:////mlflow/auth/basic_auth.db",
            admin_username="admin",
        )
    )
    parsed = []
    for text in (content, ours):
        parser = configparser.ConfigParser()
        parser.read_string(text)
        parsed.append(dict(parser["mlflow"]))
    assert parsed[0] == parsed[1]
    assert "admin_password" not in parsed[0]
    assert parsed[0]["database_uri"].startswith("sqlite:////mlflow/auth/")


def test_health_checks_use_the_servers_own_endpoints(services: dict[str, Any]) -> None:
    tracking = " ".join(services["tracking"]["healthcheck"]["test"])
    model = " ".join(services["model"]["healthcheck"]["test"])
    assert f"localhost:{TRACKING_PORT}/health" in tracking
    assert f"localhost:{SERVING_PORT}/ping" in model
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    # Docker restarts every service that exits; each one is health-checked.
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        check = service["healthcheck"]
        assert check["test"] and not check.get("disable", False), name
        assert int(check["retries"]) >= 3, name
        for key in ("interval", "timeout"):
            assert re.fullmatch(r"\d+s", check[key]), f"{name}: {key} {check[key]!r}"
