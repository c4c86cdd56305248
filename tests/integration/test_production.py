"""The production stack: PostgreSQL backend store, proxied artifacts, basic-auth, backups.

Fast tests check the configuration the stack writes. Slow tests run real servers: a
SQLite backup and restore; and, against the PostgreSQL server at 127.0.0.1:5432 (a fresh
database per run, dropped afterwards), the whole lifecycle behind a login (train →
register → promote → serve → predict → telemetry → probe → drift), 401s for anonymous and
wrong-password requests, backup and restore into a new database, and a scan that finds
no credential in any log, param, tag, artifact or database row.

With ``CI=true`` the PostgreSQL tests fail when the server is unreachable; elsewhere they
are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow import MlflowClient

from eye_model.settings import Settings, SettingsError, load_settings
from eye_model.stack import (
    ADMIN_PASSWORD_FILE_ENV,
    BASIC_AUTH_APP,
    BackupError,
    ProcessIdentity,
    StackError,
    StackPaths,
    StoreLocations,
    TrackingConfig,
    backup_stores,
    find_free_port,
    locate_stores,
    read_admin_password,
    read_manifest,
    read_stack_state,
    resolve_tracking_config,
    restore_stores,
    start_tracking,
    stop_service,
    tracking_server_launch,
    with_installed_driver,
)
from eye_model.uris import redact_uri, split_password

EYE_MODEL = str(Path(sys.executable).parent / "eye-model")
PG_HOST = os.environ.get("EYE_MODEL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("EYE_MODEL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("EYE_MODEL_TEST_PG_USER", "postgres")
MODEL_NAME = "eye-production-test"
EXPERIMENT = "production-tests"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"
#: ``scheme://user:password@``: a URI that carries a credential.
CREDENTIALED_URI = re.compile(rb"[a-z][a-z0-9+.-]*://[^\s/@:'\"]+:[^\s/@'\"]+@", re.IGNORECASE)


# --- configuration (fast) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "redacted", "password"),
    [
        ("postgresql://eye:s3cr%40t@db:5432/mlflow", "postgresql://eye@db:5432/mlflow", "s3cr@t"),
        (
            "postgresql+psycopg2://eye@db/mlflow?sslmode=require&password=pw",
            "postgresql+psycopg2://eye@db/mlflow?sslmode=require",
            "pw",
        ),
        ("mysql://:pw@db/mlflow", "mysql://db/mlflow", "pw"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db", None),
        ("s3://bucket/artifacts", "s3://bucket/artifacts", None),
        ("/plain/folder", "/plain/folder", None),
    ],
)
def test_passwords_are_taken_out_of_uris(uri: str, redacted: str, password: str | None) -> None:
    assert redact_uri(uri) == redacted
    assert split_password(uri) == (redacted, password)


def test_production_profile_needs_a_database_server(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    with pytest.raises(StackError, match="MLFLOW_BACKEND_STORE_URI"):
        resolve_tracking_config(paths, settings=Settings(), profile="production")
    with pytest.raises(StackError, match="not a database server"):
        resolve_tracking_config(
            paths,
            settings=Settings(),
            profile="production",
            backend_store_uri=f"sqlite:///{tmp_path}/m.db",
        )
    with pytest.raises(StackError, match="profile 'prod' is unknown"):
        resolve_tracking_config(paths, settings=Settings(), profile="prod")
    with pytest.raises(StackError, match="default permission 'ALL' is unknown"):
        resolve_tracking_config(
            paths,
            settings=Settings(),
            profile="production",
            backend_store_uri="postgresql://u@h/db",
            default_permission="all",
        )
    # The same mistakes in the environment are refused when the settings are read.
    with pytest.raises(SettingsError, match="EYE_MODEL_DEFAULT_PERMISSION='all'"):
        load_settings({"EYE_MODEL_DEFAULT_PERMISSION": "all"})
    with pytest.raises(SettingsError, match="EYE_MODEL_STACK_PROFILE='prod'"):
        load_settings({"EYE_MODEL_STACK_PROFILE": "prod"})


def test_production_profile_from_environment(tmp_path: Path) -> None:
    env = {
        "EYE_MODEL_STACK_PROFILE": "production",
        "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://eye@db:5432/mlflow",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "art"),
        "MLFLOW_TRACKING_USERNAME": "operator",
    }
    config = resolve_tracking_config(StackPaths(tmp_path), settings=load_settings(env))
    assert config == TrackingConfig(
        profile="production",
        backend_store_uri="postgresql+psycopg2://eye@db:5432/mlflow",
        artifacts_destination=str(tmp_path / "art"),
        app_name=BASIC_AUTH_APP,
        auth_db_uri=f"sqlite:///{tmp_path / 'basic_auth.db'}",
        admin_username="operator",
        default_permission="READ",
    )
    embedded = resolve_tracking_config(StackPaths(tmp_path), settings=load_settings({}))
    assert embedded.profile == "embedded"
    assert embedded.app_name is None
    assert embedded.backend_store_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_bare_postgresql_uri_names_the_installed_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import eye_model.stack.config as stack_config

    monkeypatch.setattr(stack_config, "_installed", lambda module: module == "psycopg2")
    assert with_installed_driver("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert with_installed_driver("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    monkeypatch.setattr(stack_config, "_installed", lambda module: module == "psycopg")
    assert with_installed_driver("postgresql://u@h/db") == "postgresql://u@h/db"
    monkeypatch.setattr(stack_config, "_installed", lambda module: False)
    with pytest.raises(StackError, match="needs a PostgreSQL driver"):
        with_installed_driver("postgresql://u:topsecret@h/db")


def test_admin_password_sources_and_errors(tmp_path: Path) -> None:
    secret = tmp_path / "admin_password"
    secret.write_text("from-the-secret-file\n")
    env = {ADMIN_PASSWORD_FILE_ENV: str(secret), "EYE_MODEL_ADMIN_PASSWORD": "from-the-variable"}
    assert read_admin_password(load_settings(env)) == (
        "from-the-secret-file",
        f"{ADMIN_PASSWORD_FILE_ENV} ({secret})",
    )
    assert read_admin_password(
        load_settings({"MLFLOW_TRACKING_PASSWORD": "tracking-password"})
    ) == (
        "tracking-password",
        "MLFLOW_TRACKING_PASSWORD",
    )
    with pytest.raises(StackError, match="EYE_MODEL_ADMIN_PASSWORD_FILE") as missing:
        read_admin_password(Settings())
    assert "EYE_MODEL_ADMIN_PASSWORD" in str(missing.value)
    with pytest.raises(StackError, match="at least 12 characters") as short:
        read_admin_password(load_settings({"EYE_MODEL_ADMIN_PASSWORD": "short-pw"}))
    assert "short-pw" not in str(short.value)
    with pytest.raises(StackError, match="cannot read"):
        read_admin_password(load_settings({ADMIN_PASSWORD_FILE_ENV: str(tmp_path / "absent")}))


def test_auth_config_is_private_and_mlflow_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.server.auth.config import read_auth_config

    password = "per%cent#hash;semi-Colon"
    paths = StackPaths(tmp_path / "home")
    config = resolve_tracking_config(
        paths,
        settings=Settings(),
        profile="production",
        backend_store_uri="postgresql+psycopg2://eye:db-password-77@db:5432/mlflow",
    )
    command, extra, unset = tracking_server_launch(
        paths, config, settings=load_settings({"EYE_MODEL_ADMIN_PASSWORD": password})
    )
    ini = paths.auth_config
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.flask_secret.stat().st_mode) == 0o600
    # Neither password is on the command line; the database's went to PGPASSWORD.
    assert not any(password in part or "db-password-77" in part for part in command)
    assert command[command.index("--backend-store-uri") + 1] == (
        "postgresql+psycopg2://eye@db:5432/mlflow"
    )
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert extra["PGPASSWORD"] == "db-password-77"
    assert password not in json.dumps(extra)
    assert {"EYE_MODEL_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"} <= set(unset)
    # MLflow's own reader gets the password back exactly ('%' survives its interpolation).
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", extra["MLFLOW_AUTH_CONFIG_PATH"])
    auth = read_auth_config()
    assert auth.admin_password == password
    assert auth.admin_username == "admin"
    assert auth.database_uri == f"sqlite:///{paths.auth_db}"
    assert auth.default_permission == "READ"
    assert auth.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"


def test_model_server_logs_in_with_client_or_admin_credentials(tmp_path: Path) -> None:
    from eye_model.stack import model_server_environment

    config = resolve_tracking_config(
        StackPaths(tmp_path),
        settings=Settings(),
        profile="production",
        backend_store_uri="postgresql://u@h/db",
    )
    url = "http://127.0.0.1:5000"
    admin = model_server_environment(
        url, config, load_settings({"EYE_MODEL_ADMIN_PASSWORD": "admin-password-1"})
    )
    assert admin == {
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "admin-password-1",
    }
    # A serving user of the caller's environment is handed on explicitly: the model server
    # inherits no secret variable, MLFLOW_TRACKING_PASSWORD included.
    client = {"MLFLOW_TRACKING_USERNAME": "serving", "MLFLOW_TRACKING_PASSWORD": "serving-pw-12"}
    assert model_server_environment(url, config, load_settings(client)) == {
        "MLFLOW_TRACKING_URI": url,
        **client,
    }
    embedded = resolve_tracking_config(StackPaths(tmp_path), settings=Settings())
    assert model_server_environment(url, embedded, Settings()) == {"MLFLOW_TRACKING_URI": url}
    # A tracking server named in the settings wins over the stack's.
    other = load_settings({"MLFLOW_TRACKING_URI": "http://tracking.example:5000"})
    assert model_server_environment(url, embedded, other) == {
        "MLFLOW_TRACKING_URI": "http://tracking.example:5000"
    }


def test_stopping_the_tracking_server_removes_the_password_file(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    paths.auth_config.write_text("[mlflow]\nadmin_password = x\n")
    assert stop_service(paths, "tracking") is False  # nothing ran
    assert not paths.auth_config.exists()


# --- backup and restore without servers (fast) ------------------------------------------------


def _small_stores(root: Path, *, auth: bool = True) -> StoreLocations:
    """A SQLite backend, 30 artifact files of random bytes and (optionally) a users database."""
    for name, table in (("mlflow.db", "runs"), ("basic_auth.db", "users")):
        if name == "mlflow.db" or auth:
            with sqlite3.connect(root / name) as db:
                db.execute(f"CREATE TABLE {table} (id TEXT)")
                db.execute(f"INSERT INTO {table} VALUES ('row-1')")
    for i in range(30):
        folder = root / "mlartifacts" / "1" / f"run{i:02d}" / "artifacts"
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_bytes(os.urandom(20_000))  # incompressible
    return StoreLocations(
        f"sqlite:///{root / 'mlflow.db'}",
        str(root / "mlartifacts"),
        f"sqlite:///{root / 'basic_auth.db'}" if auth else "",
    )


def test_backup_of_a_login_stack_finds_the_users_database_or_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _small_stores(home, auth=False)
    # As docs/production.md does it: the backend store and the profile in the environment.
    settings = load_settings(
        {
            "EYE_MODEL_HOME": str(home),
            "EYE_MODEL_STACK_PROFILE": "production",
            "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{home / 'mlflow.db'}",
        }
    )
    manifest = backup_stores(tmp_path / "without", locate_stores(settings=settings))
    assert manifest["auth"] == {"kind": "missing", "searched": [f"sqlite:///{home}/basic_auth.db"]}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("users database (basic-auth) was not found" in w for w in warnings)
    assert read_manifest(tmp_path / "without")["auth"]["kind"] == "missing"

    # stack up's default users database, found with the same settings: backed up, 0600.
    with sqlite3.connect(home / "basic_auth.db") as db:
        db.execute("CREATE TABLE users (id TEXT)")
    manifest = backup_stores(tmp_path / "with", locate_stores(settings=settings))
    assert manifest["auth"]["kind"] == "sqlite"
    copy = tmp_path / "with" / "auth.sqlite"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "with" / "manifest.json").stat().st_mode) == 0o600


def _restore_args(backup: Path, target: Path) -> list[str]:
    return [
        "restore",
        "--from",
        str(backup),
        "--backend-store-uri",
        f"sqlite:///{target / 'mlflow.db'}",
        "--artifacts-destination",
        str(target / "mlartifacts"),
        "--auth-db-uri",
        f"sqlite:///{target / 'basic_auth.db'}",
    ]


def _rewrite_manifest(backup: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((backup / "manifest.json").read_text())
    (backup / "manifest.json").write_text(json.dumps(change(manifest)))


def _truncate_archive(backup: Path) -> None:
    """Cut artifacts.tar.gz in half and make the manifest agree: a fault during extraction."""
    archive = backup / "artifacts.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    def change(manifest: dict) -> dict:
        manifest["artifacts"].update(
            bytes=archive.stat().st_size, sha256=hashlib.sha256(archive.read_bytes()).hexdigest()
        )
        return manifest

    _rewrite_manifest(backup, change)


def _without(key: str) -> Callable[[dict], dict]:
    return lambda manifest: {k: v for k, v in manifest.items() if k != key}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: '{"format": 1, "backe', "not valid JSON"),
        (lambda m: [m], "not a JSON object"),
        (_without("backend"), "'backend' is missing"),
        (lambda m: {**m, "backend": "backend.sqlite"}, "'backend' is missing or not an object"),
        (lambda m: {**m, "backend": {**m["backend"], "kind": 3}}, "'backend.kind' is 3"),
        (lambda m: {**m, "backend": {**m["backend"], "file": "../x"}}, "'backend.file'"),
        (lambda m: {**m, "artifacts": {**m["artifacts"], "bytes": "12"}}, "'artifacts.bytes'"),
        (lambda m: {**m, "auth": {"kind": "sqlite"}}, "'auth.file' is None"),
        (lambda m: {**m, "format": "1"}, "'format' is '1', not a version number"),
        (lambda m: {**m, "format": 2}, "backup format 2 is not supported"),
        (_without("created_at"), "'created_at' is missing"),
    ],
)
def test_a_malformed_manifest_is_one_clear_line(
    tmp_path: Path, damage: Callable[[dict], object], message: str
) -> None:
    from click.testing import CliRunner

    from eye_model.cli import main

    source = tmp_path / "source"
    source.mkdir()
    backup = tmp_path / "backup"
    backup_stores(backup, _small_stores(source))
    manifest = json.loads((backup / "manifest.json").read_text())
    damaged = damage(manifest)
    text = damaged if isinstance(damaged, str) else json.dumps(damaged)
    (backup / "manifest.json").write_text(text)
    with pytest.raises(BackupError, match=re.escape(message)):
        read_manifest(backup)
    result = CliRunner().invoke(main, _restore_args(backup, tmp_path / "target"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not (tmp_path / "target").exists()


def test_a_failed_restore_leaves_nothing_and_a_retry_works(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    backup = tmp_path / "backup"
    backup_stores(backup, _small_stores(source))
    good = tmp_path / "good-copy"
    shutil.copytree(backup, good)
    _truncate_archive(backup)  # the database and the users are restored before this breaks
    stores = locate_stores(
        settings=Settings(),
        backend_store_uri=f"sqlite:///{target / 'mlflow.db'}",
        artifacts_destination=str(target / "mlartifacts"),
        auth_db_uri=f"sqlite:///{target / 'basic_auth.db'}",
    )
    broke = "was removed: extracting artifacts.tar.gz .* failed"
    with pytest.raises(BackupError, match=broke) as failed:
        restore_stores(backup, stores)
    assert "run the same command again" in str(failed.value)
    assert not target.exists()  # no database, no auth db, no artifact file, no staging folder

    restore_stores(good, stores)  # the retry, from an intact backup
    restored = sorted(p.relative_to(target / "mlartifacts") for p in target.rglob("*.bin"))
    assert len(restored) == 30
    assert stat.S_IMODE((target / "basic_auth.db").stat().st_mode) == 0o600
    with sqlite3.connect(target / "basic_auth.db") as db:
        assert db.execute("SELECT id FROM users").fetchall() == [("row-1",)]
    assert sorted(p.name for p in target.iterdir()) == ["basic_auth.db", "mlartifacts", "mlflow.db"]


# --- helpers for real servers -------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1.0)
    return condition()


@dataclass
class Outputs:
    """Everything the commands printed, scanned for credentials at the end."""

    texts: list[str] = field(default_factory=list)

    def run(self, args: list[str], env: dict[str, str], timeout: float = 900) -> str:
        result = subprocess.run(
            [EYE_MODEL, *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        self.texts += [result.stdout, result.stderr]
        assert result.returncode == 0, f"eye-model {args[0]} failed:\n{result.stderr[-4000:]}"
        return result.stdout


def _command_lines() -> dict[int, bytes]:
    """The command line of every process of this machine."""
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
    return lines


def _group_environs(leader: int) -> dict[int, bytes]:
    """The environment of every process in the process group of ``leader``."""
    environs = {}
    for pid in _command_lines():
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
            if int(stat_line.rsplit(")", 1)[1].split()[2]) == leader:
                environs[pid] = Path(f"/proc/{pid}/environ").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
    return environs


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow client settings the conftest or a user may have set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "EYE_MODEL_")) and k not in ("PGPASSWORD",)
    }
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


@pytest.mark.slow
def test_the_tracking_server_starts_no_job_runner(tmp_path: Path) -> None:
    """eye-model uses none of MLflow's server jobs: its tracking server's process group is
    the server and its workers, without the job runner and its huey consumers (eight more
    processes, about 12 s of CPU at every start)."""
    from tests.helpers import TrackingServer

    server = TrackingServer(tmp_path).start()
    try:
        assert server.process is not None
        group = subprocess.run(
            ["pgrep", "-a", "-g", str(server.process.pid)], capture_output=True, text=True
        ).stdout
    finally:
        server.stop()
    assert "mlflow server" in group or "mlflow.server" in group, group
    assert "_job_runner" not in group and "huey" not in group, group


# --- SQLite backup and restore (slow, no PostgreSQL) ----------------------------------------


@pytest.mark.slow
def test_sqlite_backup_and_restore(tmp_path: Path, tiny_network, monkeypatch) -> None:
    from eye_model.pyfunc import ModelConfig, log_model
    from eye_model.registry import register_model
    from tests.conftest import TINY_IMAGE_SIZE
    from tests.helpers import TrackingServer

    source_home = tmp_path / "source"
    source_home.mkdir()
    server = TrackingServer(source_home).start()
    outputs = Outputs()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mlflow.set_tracking_uri(server.url)
        mlflow.set_registry_uri(server.url)
        mlflow.set_experiment("backup-tests")
        with mlflow.start_run() as run:
            mlflow.log_param("kind", "backup")
            log_model(tiny_network, ModelConfig(image_size=TINY_IMAGE_SIZE))
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        register_model(f"runs:/{run.info.run_id}/model", MODEL_NAME)
        # Backed up while the server runs: SQLite's backup API gives a consistent copy.
        outputs.run(
            [
                "backup",
                "--out",
                str(tmp_path / "backup"),
                "--backend-store-uri",
                f"sqlite:///{source_home / 'mlflow.db'}",
                "--artifacts-destination",
                str(source_home / "artifacts"),
            ],
            _clean_env(),
        )
    finally:
        server.stop()
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["backend"]["kind"] == "sqlite"
    assert manifest["artifacts"]["files"] > 3
    assert stat.S_IMODE((tmp_path / "backup").stat().st_mode) == 0o700

    target_home = tmp_path / "restored"
    restore_args = [
        "restore",
        "--from",
        str(tmp_path / "backup"),
        "--backend-store-uri",
        f"sqlite:///{target_home / 'mlflow.db'}",
        "--artifacts-destination",
        str(target_home / "artifacts"),
        "--auth-db-uri",
        "",
    ]
    outputs.run(restore_args, _clean_env())
    # A second restore into the same (now full) targets is refused and changes nothing.
    again = subprocess.run(
        [EYE_MODEL, *restore_args], env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode != 0
    assert "already exists; restore into a new file" in again.stderr

    restored = TrackingServer(target_home).start()
    try:
        mlflow.set_tracking_uri(restored.url)
        mlflow.set_registry_uri(restored.url)
        client = MlflowClient(restored.url, registry_uri=restored.url)
        version = client.get_model_version(MODEL_NAME, "1")
        assert version.run_id == run.info.run_id
        assert client.get_run(run.info.run_id).data.params["kind"] == "backup"
        local = mlflow.artifacts.download_artifacts(
            f"models:/{MODEL_NAME}/1", dst_path=str(tmp_path / "dl"), tracking_uri=restored.url
        )
        assert (Path(local) / "MLmodel").is_file()
    finally:
        restored.stop()
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")


# --- PostgreSQL: the production stack (slow) -------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _admin_connection(database: str = "postgres"):
    import psycopg2

    connection = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database, connect_timeout=5
    )
    connection.autocommit = True
    return connection


def _require_postgres() -> None:
    try:
        _admin_connection().close()
    except Exception as exc:
        reason = (
            f"PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}) is unreachable: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        )
        if _in_ci():
            pytest.fail(
                f"{reason}. CI=true, so the production tests must run: start PostgreSQL there "
                "(or point EYE_MODEL_TEST_PG_HOST/PORT/USER at one)",
                pytrace=False,
            )
        pytest.skip(f"{reason} (on CI this fails)")


def _create_database(prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(6)}"
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    return name


def _drop_database(name: str) -> None:
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


def _query(database: str, sql: str) -> list[tuple]:
    connection = _admin_connection(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())
    finally:
        connection.close()


@dataclass
class ProductionStack:
    """A running production stack and what the lifecycle produced on it."""

    home: Path
    database: str
    backend_store_uri: str
    db_password: str
    password: str
    tracking_url: str
    tracking_port: int
    env: dict[str, str]
    outputs: Outputs
    model_url: str = ""
    results: dict[str, object] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def paths(self) -> StackPaths:
        return StackPaths(self.home)

    def client_env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.tracking_url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": self.password,
            "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        }


def _production_up(home: Path, port: int, backend: str) -> list[str]:
    """``eye-model stack up`` of the production profile (its arguments)."""
    return [
        "stack",
        "up",
        "--profile",
        "production",
        "--home",
        str(home),
        "--tracking-port",
        str(port),
        "--backend-store-uri",
        backend,
    ]


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    """The production stack on a fresh database: `eye-model stack up --profile production`."""
    _require_postgres()
    database = _create_database("eye_model_test")
    home = tmp_path_factory.mktemp("production-home")
    # PostgreSQL trusts loopback here, so this password is never checked: it is in the URI
    # only to prove that a database password never leaks either.
    db_password = f"dbpw-{secrets.token_hex(8)}"
    backend = f"postgresql://{PG_USER}:{db_password}@{PG_HOST}:{PG_PORT}/{database}"
    password = f"Adm1n-{secrets.token_urlsafe(15)}"
    port = find_free_port()
    env = _clean_env(
        EYE_MODEL_ADMIN_PASSWORD=password,
        EYE_MODEL_CACHE=str(home / "cache"),
        EYE_MODEL_TELEMETRY_DIR=str(home / "telemetry"),
        EYE_MODEL_LOG_PART_SECONDS="1",
        EYE_MODEL_SHIP_INTERVAL="0.5",
        MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
    )
    stack = ProductionStack(
        home=home,
        database=database,
        backend_store_uri=backend,
        db_password=db_password,
        password=password,
        tracking_url=f"http://127.0.0.1:{port}",
        tracking_port=port,
        env=env,
        outputs=Outputs(),
    )
    up = _production_up(home, port, backend)
    stack.results["up"] = up
    try:
        stack.outputs.run(up, env)
        yield stack
    finally:
        for action in reversed(stack.cleanup):
            action()
        subprocess.run(
            [EYE_MODEL, "stack", "down", "--home", str(home)], env=env, timeout=120, check=False
        )
        _drop_database(database)


@pytest.fixture
def as_admin(production: ProductionStack, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """This process talks to the production server as the admin (MLflow's client variables)."""
    for key, value in production.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EYE_MODEL_CACHE", str(production.home / "cache"))
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(production.tracking_url)
    mlflow.set_registry_uri(production.tracking_url)
    yield MlflowClient(production.tracking_url)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.mark.slow
@pytest.mark.postgres
def test_production_stack_runs_on_postgres_behind_a_login(production: ProductionStack) -> None:
    paths = production.paths
    ini = paths.auth_config
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert production.password in ini.read_text()
    state = read_stack_state(paths)
    assert state["profile"] == "production"
    assert state["app_name"] == "basic-auth"
    assert state["backend_store_uri"].endswith(f"@{PG_HOST}:{PG_PORT}/{production.database}")
    # MLflow created its schema in the new PostgreSQL database.
    tables = {row[0] for row in _query(production.database, "SELECT tablename FROM pg_tables")}
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables

    url = production.tracking_url
    assert requests.get(f"{url}/health", timeout=30).status_code == 200  # no login for health
    assert requests.get(f"{url}{SEARCH}", timeout=30).status_code == 401
    wrong = requests.get(f"{url}{SEARCH}", auth=("admin", "not-the-password"), timeout=30)
    assert wrong.status_code == 401
    nobody = requests.get(f"{url}{SEARCH}", auth=("nobody", production.password), timeout=30)
    assert nobody.status_code == 401
    right = requests.get(f"{url}{SEARCH}", auth=("admin", production.password), timeout=30)
    assert right.status_code == 200, right.text
    assert (
        requests.post(
            f"{url}/api/2.0/mlflow/experiments/create", json={"name": "x"}, timeout=30
        ).status_code
        == 401
    )
    # The server process has neither the admin password nor its secret file in its environment.
    pid = ProcessIdentity.from_json(paths.pid_file("tracking").read_text()).pid
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert production.password.encode() not in environ
    assert b"EYE_MODEL_ADMIN_PASSWORD" not in environ
    assert production.db_password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # MLflow created the users database (password hashes): this user only.
    assert stat.S_IMODE(paths.auth_db.stat().st_mode) == 0o600


@pytest.mark.slow
@pytest.mark.postgres
def test_a_refused_admin_password_stops_what_stack_up_started(
    production: ProductionStack, tmp_path: Path
) -> None:
    # A second stack on the same stores whose admin password is not the admin's.
    home, port = tmp_path / "second", find_free_port()
    env = {**production.env, "EYE_MODEL_ADMIN_PASSWORD": f"Wrong-{secrets.token_hex(8)}"}
    up = _production_up(home, port, production.backend_store_uri)
    up += ["--auth-db-uri", f"sqlite:///{production.paths.auth_db}"]
    result = subprocess.run([EYE_MODEL, *up], env=env, capture_output=True, text=True, timeout=600)
    production.outputs.texts += [result.stdout, result.stderr]
    assert result.returncode == 1
    assert "answers 401 to user 'admin'" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing it started is left: no server, no pid file, no ini with the password, no state.
    assert not StackPaths(home).pid_file("tracking").exists()
    assert not StackPaths(home).auth_config.exists()
    assert not StackPaths(home).state_file.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
    assert not [pid for pid, cmdline in _command_lines().items() if str(home).encode() in cmdline]


@pytest.mark.slow
@pytest.mark.postgres
def test_lifecycle_against_the_authenticated_postgres_stack(
    production: ProductionStack, as_admin: MlflowClient
) -> None:
    from eye_model.registry import promote, register_model
    from eye_model.serving import score_files
    from eye_model.synthetic import generate_dataset
    from eye_model.train import TrainConfig, run_training

    client = as_admin
    # Train twice (tiny), register both, promote v1 then v2 through the quality gate.
    trained = [
        run_training(TrainConfig(synthetic_per_class=8, image_size=64, epochs=1, seed=seed))
        for seed in (1, 2)
    ]
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    versions = [register_model(result.model_uri, MODEL_NAME).version for result in trained]
    assert versions == ["1", "2"]
    production.results["trained"] = [result.run_id for result in trained]
    gate_data = production.home / "gate-data"
    generate_dataset(gate_data, per_class=3, image_size=96, seed=5, progress=False)
    first = promote(MODEL_NAME, "1", "Production", eval_data_dir=str(gate_data))
    assert first.decision == "moved"
    second = promote(MODEL_NAME, "2", "Production", force=True, eval_data_dir=str(gate_data))
    assert second.decision in ("accepted", "forced")
    assert second.candidate_macro_f1 is not None and second.production_macro_f1 is not None
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == "2"
    assert client.get_model_version(MODEL_NAME, "1").current_stage == "Archived"

    # Everything lives in PostgreSQL, not in some local file.
    runs = _query(production.database, "SELECT count(*) FROM runs")[0][0]
    assert runs >= 2
    rows = _query(production.database, "SELECT version, current_stage FROM model_versions")
    assert sorted(rows) == [(1, "Archived"), (2, "Production")]

    # Serve the Production version with the stack: the model server logs in by itself.
    serving_port = find_free_port()
    production.outputs.run(
        [
            *production.results["up"],  # type: ignore[list-item]
            "--model-uri",
            f"models:/{MODEL_NAME}/Production",
            "--serving-port",
            str(serving_port),
        ],
        # The operator's shell of docs/production.md: backend store, libpq and admin secrets.
        {
            **production.env,
            "MLFLOW_BACKEND_STORE_URI": production.backend_store_uri,
            "PGPASSWORD": production.db_password,
            "MLFLOW_AUTH_ADMIN_PASSWORD": production.password,
            "EYE_MODEL_AUTH_DB_URI": f"sqlite:///{production.paths.auth_db}",
        },
    )
    production.model_url = f"http://127.0.0.1:{serving_port}"
    # Every process of the model server has its login, and no backend-store credential.
    model_pid = ProcessIdentity.from_json(production.paths.pid_file("model").read_text()).pid
    environs = _group_environs(model_pid)
    assert environs
    for environ in environs.values():
        names = {line.split(b"=", 1)[0].decode() for line in environ.split(b"\0") if line}
        assert not names & {
            "MLFLOW_BACKEND_STORE_URI",
            "PGPASSWORD",
            "EYE_MODEL_ADMIN_PASSWORD",
            "EYE_MODEL_ADMIN_PASSWORD_FILE",
            "MLFLOW_AUTH_ADMIN_PASSWORD",
            "EYE_MODEL_AUTH_DB_URI",
            "MLFLOW_FLASK_SERVER_SECRET_KEY",
            "MLFLOW_AUTH_CONFIG_PATH",
        }
        assert production.db_password.encode() not in environ
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= names
    images = sorted(gate_data.glob("*/*.jpg"))[:6]
    predictions = score_files(production.model_url, images)
    assert len(predictions) == 6
    assert all(p["error"] is None and 0 <= p["confidence"] <= 1 for p in predictions)

    # Serving telemetry reaches the authenticated server: a serving run with every record.
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None

    def delivered() -> bool:
        serving = client.search_runs([experiment.experiment_id], "tags.role = 'serving'")
        if len(serving) != 1:
            return False
        production.results["serving_run"] = serving[0].info.run_id
        history = client.get_metric_history(serving[0].info.run_id, "prediction_confidence")
        return len(history) == 6

    assert _wait_for(delivered, 90), "the serving run did not receive 6 predictions"


@pytest.mark.slow
@pytest.mark.postgres
def test_probe_logs_to_the_authenticated_server(
    production: ProductionStack, as_admin: MlflowClient
) -> None:
    from eye_model.telemetry import run_probe

    if not production.model_url:
        pytest.fail("the lifecycle test did not start the model server")
    results = run_probe(production.model_url, interval=0, count=2, timeout=30)
    assert [r.ok for r in results] == [True, True]
    experiment = as_admin.get_experiment_by_name(EXPERIMENT)
    probes = as_admin.search_runs([experiment.experiment_id], "tags.role = 'probe'")
    assert len(probes) == 1
    assert probes[0].data.metrics["health_check_count"] == 2


@pytest.mark.slow
@pytest.mark.postgres
def test_drift_runs_against_the_authenticated_server(
    production: ProductionStack, as_admin: MlflowClient
) -> None:
    if "serving_run" not in production.results:
        pytest.fail("the lifecycle test did not deliver a serving run")
    env = {**production.env, **production.client_env()}
    production.outputs.run(
        ["drift", "--model-uri", f"models:/{MODEL_NAME}/Production", "--window", "0"], env
    )
    experiment = as_admin.get_experiment_by_name(EXPERIMENT)
    drift = as_admin.search_runs([experiment.experiment_id], "tags.role = 'drift'")
    assert len(drift) == 1
    assert "drift_detected" in drift[0].data.metrics


@pytest.mark.slow
@pytest.mark.postgres
def test_admin_creates_users_and_grants_permissions(
    production: ProductionStack, as_admin: MlflowClient
) -> None:
    from mlflow.server import get_app_client

    if "trained" not in production.results:
        pytest.fail("the lifecycle test did not train and register")
    auth = get_app_client("basic-auth", tracking_uri=production.tracking_url)
    reader_password = f"Reader-{secrets.token_urlsafe(12)}"
    auth.create_user("reader", reader_password)
    production.results["reader_password"] = reader_password
    url, reader = production.tracking_url, ("reader", reader_password)
    run_id = production.results["trained"][0]  # type: ignore[index]
    experiment_id = as_admin.get_run(run_id).info.experiment_id
    tag = {"run_id": run_id, "key": "reviewed", "value": "yes"}
    # default_permission READ: a new user reads everything and changes nothing.
    assert requests.get(f"{url}{SEARCH}", auth=reader, timeout=30).status_code == 200
    refused = requests.post(f"{url}/api/2.0/mlflow/runs/set-tag", json=tag, auth=reader, timeout=30)
    assert refused.status_code == 403
    auth.grant_user_permission("reader", "experiment", experiment_id, "EDIT")
    allowed = requests.post(f"{url}/api/2.0/mlflow/runs/set-tag", json=tag, auth=reader, timeout=30)
    assert allowed.status_code == 200, allowed.text
    assert as_admin.get_run(run_id).data.tags["reviewed"] == "yes"


@pytest.mark.slow
@pytest.mark.postgres
def test_cli_tells_401_403_and_404_apart(
    production: ProductionStack, as_admin: MlflowClient
) -> None:
    """A read-only user's promote, a wrong password and a missing run each get one line that
    names the problem and the fix, never a traceback, and change nothing."""
    if "reader_password" not in production.results:
        pytest.fail("the users test did not create the reader")
    before = {
        str(v.version): v.current_stage
        for v in as_admin.search_model_versions(f"name = '{MODEL_NAME}'")
    }
    promote = ["promote", "--model-name", MODEL_NAME, "--version", "1", "--stage", "Archived"]

    def run(user: str, password: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **production.client_env(),
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password,
        }
        return subprocess.run(
            [EYE_MODEL, *args], env=_clean_env(**env), capture_output=True, text=True, timeout=180
        )

    checks = [
        (run("reader", str(production.results["reader_password"]), *promote), "HTTP 403"),
        (run("reader", "not-the-password", *promote), "HTTP 401"),
        (
            run(
                "admin",
                production.password,
                "register",
                "--model-uri",
                "runs:/0123456789abcdef0123456789abcdef/model",
                "--model-name",
                MODEL_NAME,
            ),
            "does not exist",
        ),
    ]
    for result, expected in checks:
        assert result.returncode == 1, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    forbidden = checks[0][0].stderr
    assert "EDIT on the registered model" in forbidden
    assert "MLFLOW_TRACKING_USERNAME" in checks[1][0].stderr
    after = {
        str(v.version): v.current_stage
        for v in as_admin.search_model_versions(f"name = '{MODEL_NAME}'")
    }
    assert after == before


@pytest.mark.slow
@pytest.mark.postgres
def test_backup_and_restore_into_an_empty_database(
    production: ProductionStack, as_admin: MlflowClient, tmp_path: Path
) -> None:
    if "trained" not in production.results:
        pytest.fail("the lifecycle test did not train and register")
    backup_dir = tmp_path / "backup"
    # As docs/production.md: the stack's home and backend store exported, the password in
    # PGPASSWORD; the artifact folder and the users database are the ones `stack up` uses.
    backend_without_password = redact_uri(production.backend_store_uri)
    docs_env = {
        **_clean_env(),
        "EYE_MODEL_HOME": str(production.home),
        "MLFLOW_BACKEND_STORE_URI": backend_without_password,
        "PGPASSWORD": production.db_password,
    }
    production.outputs.run(["backup", "--out", str(backup_dir)], docs_env)
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert manifest["backend"]["kind"] == "postgresql"
    assert manifest["artifacts"]["files"] > 5
    assert manifest["auth"]["kind"] == "sqlite"
    assert manifest["auth"]["uri"] == f"sqlite:///{production.paths.auth_db}"
    assert stat.S_IMODE((backup_dir / "auth.sqlite").stat().st_mode) == 0o600
    production.outputs.texts.append(json.dumps(manifest))

    target_db = _create_database("eye_model_restore")
    production.cleanup.append(lambda: _drop_database(target_db))
    target_home = tmp_path / "restored"
    target_uri = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{target_db}"
    restore = [
        "restore",
        "--from",
        str(backup_dir),
        "--backend-store-uri",
        target_uri,
        "--artifacts-destination",
        str(target_home / "mlartifacts"),
        "--auth-db-uri",
        f"sqlite:///{target_home / 'basic_auth.db'}",
    ]
    # Restoring into the live, non-empty database is refused.
    refused = subprocess.run(
        [
            EYE_MODEL,
            *restore[:3],
            "--backend-store-uri",
            production.backend_store_uri,
            *restore[5:],
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0
    assert "is not empty" in refused.stderr
    assert production.db_password not in refused.stderr

    # A restore whose artifacts step breaks half way (the database and the users are
    # restored by then) takes everything back: the same command then works.
    broken = tmp_path / "broken-backup"
    shutil.copytree(backup_dir, broken)
    _truncate_archive(broken)
    failed = subprocess.run(
        [EYE_MODEL, *restore[:2], str(broken), *restore[3:]],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    production.outputs.texts += [failed.stdout, failed.stderr]
    assert failed.returncode == 1
    assert "everything it wrote was removed" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    counts = "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = 'public'), " + (
        "(SELECT count(*) FROM pg_sequences WHERE schemaname = 'public')"
    )
    assert _query(target_db, counts) == [(0, 0)]
    assert not target_home.exists()  # no auth.db, no artifact file, no staging folder
    production.outputs.run(restore, _clean_env())
    assert stat.S_IMODE((target_home / "basic_auth.db").stat().st_mode) == 0o600

    # A second tracking server on the restored stores: same runs, models, users, artifacts.
    paths = StackPaths(target_home)
    config = resolve_tracking_config(
        paths, settings=Settings(), profile="production", backend_store_uri=target_uri
    )
    port = find_free_port()
    production.cleanup.append(lambda: stop_service(paths, "tracking"))
    url = start_tracking(
        paths,
        settings=load_settings({"EYE_MODEL_ADMIN_PASSWORD": production.password}),
        port=port,
        config=config,
    )
    assert stat.S_IMODE((target_home / "basic_auth.db").stat().st_mode) == 0o600
    # The admin's credentials are in the environment; models:/ URIs resolve on this server.
    mlflow.set_registry_uri(url)
    restored = MlflowClient(url, registry_uri=url)
    assert requests.get(f"{url}{SEARCH}", timeout=30).status_code == 401
    reader = ("reader", production.results["reader_password"])  # the users came back too
    assert requests.get(f"{url}{SEARCH}", auth=reader, timeout=30).status_code == 200
    versions = {
        v.version: v.current_stage for v in restored.search_model_versions(f"name='{MODEL_NAME}'")
    }
    assert versions == {"1": "Archived", "2": "Production"}
    assert restored.get_model_version_by_alias(MODEL_NAME, "champion").version == "2"
    for run_id in production.results["trained"]:  # type: ignore[union-attr]
        original, copy = as_admin.get_run(run_id), restored.get_run(run_id)
        assert copy.data.metrics["test_macro_f1"] == original.data.metrics["test_macro_f1"]
        assert copy.data.params == original.data.params
    local = mlflow.artifacts.download_artifacts(
        f"models:/{MODEL_NAME}/Production", dst_path=str(tmp_path / "dl"), tracking_uri=url
    )
    assert (Path(local) / "MLmodel").is_file()
    production.results["restored_home"] = target_home


@pytest.mark.slow
@pytest.mark.postgres
def test_no_credential_in_logs_params_tags_artifacts_or_rows(
    production: ProductionStack, as_admin: MlflowClient, tmp_path: Path
) -> None:
    """Runs last: stops the model server (its final log lines count too), then scans."""
    if "trained" not in production.results:
        pytest.fail("the lifecycle test did not train and register")
    stop_service(production.paths, "model")
    secrets_ = [production.password.encode(), production.db_password.encode()]
    secrets_.append(str(production.results["reader_password"]).encode())
    homes = [Path(h) for h in (production.home, production.results.get("restored_home")) if h]
    # The 0600 ini of a running tracking server is where the admin password belongs.
    allowed = {StackPaths(home).auth_config for home in homes}
    blobs: dict[str, bytes] = {}
    for home in homes:
        for path in Path(home).rglob("*"):  # logs, stack.json, telemetry, artifacts, auth db
            if path.is_file() and path not in allowed and "cache" not in path.parts:
                blobs[str(path)] = path.read_bytes()
    assert any(name.endswith("tracking.log") for name in blobs)
    assert any(name.endswith("model.log") for name in blobs)
    for i, text in enumerate(production.outputs.texts):
        blobs[f"command output {i}"] = text.encode()
    # Every param, tag and description, through the API and straight from the database.
    for experiment in as_admin.search_experiments():
        for run in as_admin.search_runs([experiment.experiment_id]):
            blobs[f"run {run.info.run_id}"] = json.dumps(
                [run.data.params, run.data.tags, run.info.artifact_uri]
            ).encode()
    for version in as_admin.search_model_versions(f"name='{MODEL_NAME}'"):
        blobs[f"version {version.version}"] = json.dumps(
            [version.tags, version.description, version.source]
        ).encode()
    dump = subprocess.run(
        [
            "pg_dump",
            "--format=plain",
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            PG_USER,
            production.database,
        ],
        capture_output=True,
        timeout=300,
        check=True,
    )
    blobs["database rows"] = dump.stdout
    assert b"test_macro_f1" in dump.stdout  # the dump holds the runs

    leaks = [
        name
        for name, blob in blobs.items()
        if any(secret in blob for secret in secrets_) or CREDENTIALED_URI.search(blob)
    ]
    assert leaks == []
