"""The ``eye-model`` commands of the local stack and its stores: ``stack``, ``backup``,
``restore`` and ``batch-score``; :mod:`eye_model.cli` adds them to its group.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eye_model.cli_options import BOOL
from eye_model.config import ENV_MANAGERS, METRICS_PORT, SERVING_PORT, TRACKING_PORT

if TYPE_CHECKING:
    from eye_model.settings import Settings
    from eye_model.stack import StackPaths


def _stack_settings(home: str | None) -> tuple[Settings, StackPaths]:
    """eye-model's settings (read once by the group) and the stack's folder.

    The folder is ``--home``, else the settings' home.
    """
    from eye_model.stack import StackPaths

    settings = click.get_current_context().find_root().obj
    return settings, StackPaths.from_settings(settings, home)


@click.group()
def stack() -> None:
    """The local stack: tracking server (5000) and model server (8080) in the background."""


@stack.command("up")
@click.option("--model-uri", default="", help="Model to serve; empty: tracking server only.")
@click.option("--home", default=None, help="State folder (default EYE_MODEL_HOME or .eye-model).")
@click.option("--tracking-port", type=int, default=TRACKING_PORT, help="Tracking server port.")
@click.option("--serving-port", type=int, default=SERVING_PORT, help="Model server port.")
@click.option("--host", default="127.0.0.1", help="Interface both servers listen on.")
@click.option(
    "--profile",
    type=click.Choice(["embedded", "production"]),
    default=None,
    help="embedded: SQLite, local artifacts, no login; production: database server, proxied "
    "artifacts, basic-auth [default: EYE_MODEL_STACK_PROFILE, else embedded]",
)
@click.option(
    "--backend-store-uri",
    default=None,
    help="production: postgresql://USER@HOST:5432/DB [default: MLFLOW_BACKEND_STORE_URI]",
)
@click.option(
    "--artifacts-destination",
    default=None,
    help="Folder or s3://bucket/path [default: <home>/mlartifacts; production: "
    "MLFLOW_ARTIFACTS_DESTINATION first]",
)
@click.option(
    "--auth-db-uri",
    default=None,
    help="production: user database [default: EYE_MODEL_AUTH_DB_URI, else "
    "sqlite:///<home>/basic_auth.db]",
)
@click.option(
    "--allowed-hosts", default=None, help="Host headers the tracking server answers (a,b,c)."
)
@click.option("--workers", "-w", type=int, default=1, help="Model server worker processes.")
@click.option(
    "--metrics-port",
    type=int,
    default=METRICS_PORT,
    help="Prometheus /metrics of the model server (0: none).",
)
def stack_up(
    model_uri: str,
    home: str | None,
    tracking_port: int,
    serving_port: int,
    host: str,
    profile: str | None,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    auth_db_uri: str | None,
    allowed_hosts: str | None,
    workers: int,
    metrics_port: int,
) -> None:
    """Start the servers (those already running are kept) and wait until they are healthy.

    The model server runs under a supervisor that restarts it when it or a worker dies;
    `stack status` shows the restarts and their last cause.

    The production profile reads the admin password from EYE_MODEL_ADMIN_PASSWORD_FILE,
    EYE_MODEL_ADMIN_PASSWORD, MLFLOW_AUTH_ADMIN_PASSWORD or MLFLOW_TRACKING_PASSWORD.
    When a step fails, the servers this command started are stopped again.
    """
    from eye_model.settings import settings_environ
    from eye_model.stack import (
        model_server_environment,
        resolve_tracking_config,
        start_model_server,
        start_tracking,
        stopped_on_failure,
    )

    settings, paths = _stack_settings(home)
    try:
        with stopped_on_failure(paths):
            config = resolve_tracking_config(
                paths,
                settings=settings,
                profile=profile,
                backend_store_uri=backend_store_uri,
                artifacts_destination=artifacts_destination,
                auth_db_uri=auth_db_uri,
                allowed_hosts=allowed_hosts,
            )
            tracking_uri = start_tracking(
                paths, settings=settings, port=tracking_port, host=host, config=config
            )
            described = config.describe()
            click.echo(f"tracking server: {tracking_uri} (UI and API); logs in {paths.logs}")
            login = (
                f", login required (user {config.admin_username!r})" if config.authenticated else ""
            )
            click.echo(
                f"  {described['profile']}: backend {described['backend_store_uri']}, "
                f"artifacts {described['artifacts_destination']}{login}"
            )
            if model_uri:
                env = model_server_environment(tracking_uri, config, settings)
                # The served model's telemetry names what it was asked for (the registered
                # name and version are resolved from it inside the server).
                env.update(settings_environ(served_uri=model_uri, served_source="stack"))
                url = start_model_server(
                    paths,
                    model_uri,
                    port=serving_port,
                    host=host,
                    workers=workers,
                    env=env,
                    metrics_port=metrics_port,
                )
                click.echo(f"model server: {url}/invocations serving {model_uri}")
                if metrics_port:
                    click.echo(f"  metrics: http://{host}:{metrics_port}/metrics (Prometheus)")
    except RuntimeError as exc:  # StackError, or a server that did not start (log tail)
        raise click.ClickException(str(exc)) from None


@stack.command("down")
@click.option("--home", default=None, help="State folder (default EYE_MODEL_HOME or .eye-model).")
def stack_down(home: str | None) -> None:
    """Stop the model server, then the tracking server."""
    from eye_model.stack import stop_service

    _, paths = _stack_settings(home)
    for service in ("model", "tracking"):
        if stop_service(paths, service):
            click.echo(f"stopped {service} server")


@stack.command("status")
@click.option("--home", default=None, help="State folder (default EYE_MODEL_HOME or .eye-model).")
def stack_status_command(home: str | None) -> None:
    """Print which servers run and the model server's restarts, as JSON; exit 1 when none runs."""
    from eye_model.stack import stack_status

    status = stack_status(_stack_settings(home)[1])
    click.echo(json.dumps(status))
    if not any(status.values()):
        sys.exit(1)


@stack.command("logs")
@click.option("--home", default=None, help="State folder (default EYE_MODEL_HOME or .eye-model).")
@click.option("--lines", "-n", type=int, default=40, help="Lines of each log.")
def stack_logs(home: str | None, lines: int) -> None:
    """Print the end of each server's log."""
    from eye_model.stack import SERVICES

    _, paths = _stack_settings(home)
    for service in SERVICES:
        log = paths.log_file(service)
        if log.exists():
            click.echo(f"==> {log} <==")
            click.echo("\n".join(log.read_text(errors="replace").splitlines()[-lines:]))


def _store_options(function):
    """Where the tracking data lives, shared by ``backup`` and ``restore``."""
    options = [
        click.option(
            "--home", default=None, help="State folder (default EYE_MODEL_HOME or .eye-model)."
        ),
        click.option(
            "--backend-store-uri",
            default=None,
            help="postgresql://USER@HOST/DB or sqlite:///PATH [default: MLFLOW_BACKEND_STORE_URI, "
            "else what `stack up` recorded in <home>/stack.json]; with it, give the artifact "
            "folder (and the auth database, if any) too",
        ),
        click.option(
            "--artifacts-destination",
            default=None,
            help="Artifact folder [default: MLFLOW_ARTIFACTS_DESTINATION, else <home>/stack.json]",
        ),
        click.option(
            "--auth-db-uri",
            default=None,
            help="basic-auth user database, '' for none [default: EYE_MODEL_AUTH_DB_URI, else "
            "stack.json]",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _on_stores(
    job: Callable[[Any], Any],
    home: str | None,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    auth_db_uri: str | None,
) -> Any:
    """Locate the stores the options name and run ``job`` on them; errors become CLI errors."""
    from eye_model.stack import BackupError, locate_stores

    settings, _ = _stack_settings(home)
    try:
        stores = locate_stores(
            home,
            settings=settings,
            backend_store_uri=backend_store_uri,
            artifacts_destination=artifacts_destination,
            auth_db_uri=auth_db_uri,
        )
        return job(stores)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--out", "out_dir", required=True, help="New or empty folder for the backup.")
@_store_options
def backup(
    out_dir: str,
    home: str | None,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    auth_db_uri: str | None,
) -> None:
    """Back up the backend store (pg_dump or SQLite copy), the artifacts and the users.

    Database passwords come from PGPASSWORD or ~/.pgpass; none is written to the backup.
    """
    from eye_model.stack import backup_stores

    stores = (home, backend_store_uri, artifacts_destination, auth_db_uri)
    manifest = _on_stores(lambda located: backup_stores(out_dir, located), *stores)
    click.echo(json.dumps({"out": str(Path(out_dir).resolve()), **manifest}))


@click.command()
@click.option("--from", "from_dir", required=True, help="A folder written by `eye-model backup`.")
@_store_options
def restore(
    from_dir: str,
    home: str | None,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    auth_db_uri: str | None,
) -> None:
    """Restore a backup into an empty database and an empty artifact folder.

    Create the database first (createdb NAME), restore, then start a tracking server on it.
    """
    from eye_model.stack import restore_stores

    stores = (home, backend_store_uri, artifacts_destination, auth_db_uri)
    result = _on_stores(lambda located: restore_stores(from_dir, located), *stores)
    click.echo(json.dumps(result))


@click.command("batch-score")
@click.option(
    "--input",
    required=True,
    help="Folder (searched recursively) or glob of images; a local path or any Hadoop URI "
    "(hdfs://, s3a://, gs://, abfss://).",
)
@click.option("--output", required=True, help="Parquet folder to write (local path or URI).")
@click.option(
    "--model-uri", required=True, help="MLflow model URI (models:/eye-disease-model/Production)."
)
@click.option("--master", default="local[*]", help="Spark master URL (spark-submit's wins).")
@click.option(
    "--env-manager",
    type=click.Choice(ENV_MANAGERS),
    default="local",
    help="local: the executors have eye-model installed; virtualenv: MLflow rebuilds the "
    "model's environment on each executor.",
)
@click.option(
    "--overwrite",
    type=BOOL,
    default=False,
    is_flag=False,
    flag_value=True,
    help="Replace the output when it exists (--overwrite, or --overwrite true/false).",
)
@click.option(
    "--records-per-batch", type=int, default=256, help="Images per Arrow batch (per predict call)."
)
def batch_score(
    input: str,
    output: str,
    model_uri: str,
    master: str,
    env_manager: str,
    overwrite: bool,
    records_per_batch: int,
) -> None:
    """Score an image archive on Spark; write Parquet (path + the REST API's columns).

    A progress line goes to stderr; the summary (rows, errors, seconds, output) is printed
    as JSON. A corrupt file becomes a row with an error, never a failed job.
    """
    from eye_model.batch import score_with_spark

    try:
        summary = score_with_spark(
            input,
            output,
            model_uri,
            master,
            env_manager=env_manager,
            overwrite=overwrite,
            records_per_batch=records_per_batch,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(summary))
