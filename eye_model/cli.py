"""The ``eye-model`` command line: one click group; MLproject entry points call its commands.

Commands parse options and call the module that owns the stage; they hold no logic.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eye_model.cli_options import BOOL, training_options
from eye_model.cli_stack import backup, batch_score, restore, stack
from eye_model.config import ALIASES, ENV_MANAGERS, SERVING_PORT

if TYPE_CHECKING:
    from eye_model.settings import Settings


class EyeModelGroup(click.Group):
    """A click group whose failures are one line naming the problem and the fix.

    Errors the commands expect are already ``ClickException``s; anything else (MLflow's
    HTTP errors, an unreachable server, a bug) is described by
    :func:`eye_model.errors.describe_error`, with the traceback only under ``--debug`` or
    ``EYE_MODEL_DEBUG=true``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            from eye_model.errors import describe_error

            settings = ctx.find_root().obj
            if ctx.find_root().meta.get("eye_model.debug") or getattr(settings, "debug", False):
                raise
            command = " ".join(ctx.protected_args) or ctx.invoked_subcommand or ""
            message = describe_error(
                exc,
                command=command.split(" ")[0],
                tracking_uri=getattr(settings, "tracking_uri", ""),
            )
            raise click.ClickException(message) from None


@click.group(
    cls=EyeModelGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(package_name="eye-model")
@click.option("--debug", is_flag=True, help="Print the full traceback when a command fails.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """eye-model: classify fundus photographs with an MLflow pyfunc model."""
    from eye_model.settings import SettingsError, load_settings

    ctx.meta["eye_model.debug"] = debug
    # MLflow retries an unreachable server for about four minutes by default; a command
    # says so after about 15 s instead (a user's own setting wins).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    # Every setting is read once here: a bad value stops any command with one clear line.
    try:
        ctx.obj = settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    # The README's defaults are the commands' defaults: without MLFLOW_TRACKING_URI MLflow
    # would write to a stray ./mlflow.db and runs would land in the Default experiment.
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    if not settings.mlflow_experiment_id:
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", settings.experiment_name)
    if settings.mlflow_run_id and ctx.invoked_subcommand:
        from eye_model.runs import tag_entry_point_run

        tag_entry_point_run(settings.tracking_uri, settings.mlflow_run_id, ctx.invoked_subcommand)


@main.command()
@training_options
def train(**params: object) -> None:
    """Train, calibrate, evaluate and log a pyfunc model (synthetic data when no data-dir)."""
    from eye_model.checkpoints import ResumeError
    from eye_model.train import TrainConfig, run_training

    try:
        result = run_training(TrainConfig(**params))  # type: ignore[arg-type]
    except ResumeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        json.dumps(
            {
                "run_id": result.run_id,
                "model_uri": result.model_uri,
                "registered_version": result.registered_version,
                "test_accuracy": result.metrics.get("test_accuracy"),
                "test_macro_f1": result.metrics.get("test_macro_f1"),
                "test_ece": result.metrics.get("test_ece"),
            }
        )
    )


@main.command()
@click.option("--data-dir", default="", help="ImageFolder dataset root; empty: synthetic.")
@click.option("--synthetic-per-class", type=int, default=300, help="Synthetic images per class.")
@click.option("--image-size", type=int, default=224, help="Network input side, in pixels.")
@click.option("--epochs", type=int, default=10, help="Most epochs of each trial.")
@click.option("--trials", type=int, default=20, help="Most trials.")
@click.option(
    "--timeout-minutes", type=float, default=0.0, help="Start no trial after this; 0: no limit."
)
@click.option(
    "--backbones",
    default="small_cnn,mobilenet_v3_small,efficientnet_b0",
    help="Backbones to search (comma-separated).",
)
@click.option("--batch-sizes", default="16,32,64", help="Batch sizes to search (comma-separated).")
@click.option("--learning-rate-min", type=float, default=1e-4, help="Lowest learning rate.")
@click.option("--learning-rate-max", type=float, default=1e-2, help="Highest learning rate.")
@click.option("--weights", default="none", help="none, imagenet or a weights file.")
@click.option("--seed", type=int, default=42, help="Seed of split, sampler and trials.")
def tune(**params: object) -> None:
    """Search learning rate, batch size and backbone (Optuna; each trial a nested run)."""
    from eye_model.tune import TuneConfig, run_tuning

    try:
        result = run_tuning(TuneConfig(**params))  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        json.dumps(
            {
                "run_id": result.run_id,
                "best_params": result.best_params,
                "best_val_macro_f1": result.best_value,
                "trials_complete": result.trials_complete,
                "trials_pruned": result.trials_pruned,
            }
        )
    )


@main.command()
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--per-class", type=int, default=100, help="Images per class.")
@click.option("--image-size", type=int, default=512, help="Side of each image, in pixels.")
@click.option("--seed", type=int, default=0, help="Seed: the same seed gives the same files.")
def synthesize(out_dir: str, per_class: int, image_size: int, seed: int) -> None:
    """Generate a synthetic fundus dataset as out_dir/<class>/*.jpg."""
    from eye_model.synthetic import generate_dataset

    counts = generate_dataset(out_dir, per_class=per_class, image_size=image_size, seed=seed)
    click.echo(json.dumps({"out_dir": out_dir, "counts": counts}))


@main.command()
@click.option(
    "--model-uri",
    "-m",
    default="",
    help="Model URI or folder; empty: resolved from ENABLE_MODEL_REGISTRY, MLFLOW_MODEL_NAME, "
    "MODEL_STAGE, MODEL_VERSION, with EYE_MODEL_LOCAL_MODEL as fallback.",
)
@click.option(
    "--alias",
    type=click.Choice(["", *ALIASES]),
    default="",
    help="Serve models:/<name>@<alias> (champion: Production, challenger: Staging).",
)
@click.option("--port", "-p", type=int, default=SERVING_PORT, help="Port of the REST API.")
@click.option("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0: all).")
@click.option(
    "--env-manager",
    type=click.Choice(ENV_MANAGERS),
    default="local",
    help="'local' serves from this environment; the others build the model's own.",
)
@click.option("--workers", "-w", type=int, default=1, help="uvicorn worker processes.")
def serve(model_uri: str, alias: str, port: int, host: str, env_manager: str, workers: int) -> None:
    """Serve a model with `mlflow models serve` (POST images to /invocations).

    A supervisor keeps it up: a server or worker that dies is restarted (cause logged);
    SIGTERM or Ctrl-C stops everything within 10 s.
    """
    from eye_model.registry import RegistryError, resolve_serving_model
    from eye_model.settings import settings_environ
    from eye_model.stack import build_serve_command, local_url, server_environment
    from eye_model.stack.supervisor import supervised_command

    try:
        resolved = resolve_serving_model(alias=alias, model_uri=model_uri)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    command = supervised_command(
        build_serve_command(
            resolved.uri, port=port, host=host, env_manager=env_manager, workers=workers
        ),
        name="model server",
        health_url=f"{local_url(host, port)}/ping",
    )
    click.echo(
        f"serving {resolved.uri} ({resolved.source}: {resolved.reason}) on http://{host}:{port}",
        err=True,
    )
    env = server_environment(
        settings_environ(
            served_uri=resolved.uri,
            served_source=resolved.source,
            served_name=resolved.name,
            served_version=resolved.version,
        )
    )
    sys.stdout.flush()
    # The supervisor replaces this process: the pid a user, systemd or Docker started
    # stays the one to signal, without this process's imports in memory.
    os.execvpe(command[0], command, env)


@main.command()
@click.option("--model-uri", required=True, help="Logged model, e.g. runs:/<run_id>/model.")
@click.option("--model-name", default="", help="Registered name (default MLFLOW_MODEL_NAME).")
def register(model_uri: str, model_name: str) -> None:
    """Register a logged model as a new version (provenance in its tags)."""
    from eye_model.registry import RegistryError, register_model

    try:
        version = register_model(model_uri, model_name)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"model_name": version.name, "version": version.version}))


@main.command()
@click.option("--model-name", default="", help="Registered name (default MLFLOW_MODEL_NAME).")
@click.option("--version", "version", default="latest", help="Version number or 'latest'.")
@click.option(
    "--stage",
    type=click.Choice(["Staging", "Production", "Archived"], case_sensitive=False),
    required=True,
    help="Target stage; Production goes through the quality gate.",
)
@click.option("--force", type=BOOL, default=False, help="Promote even if the gate refuses.")
@click.option("--eval-data-dir", default="", help="Gate data (ImageFolder); empty: synthetic.")
@click.option("--tolerance", type=float, default=0.01, help="Largest macro-F1 drop allowed.")
def promote(
    model_name: str, version: str, stage: str, force: bool, eval_data_dir: str, tolerance: float
) -> None:
    """Move a version to Staging, Production or Archived; aliases follow the stages."""
    from eye_model.registry import RegistryError
    from eye_model.registry import promote as promote_version

    try:
        result = promote_version(
            model_name,
            version,
            stage,
            force=force,
            eval_data_dir=eval_data_dir,
            tolerance=tolerance,
        )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.__dict__))


@main.command()
@click.option("--model-name", default="", help="Registered name (default MLFLOW_MODEL_NAME).")
def rollback(model_name: str) -> None:
    """Return the previous Production version to Production."""
    from eye_model.registry import RegistryError
    from eye_model.registry import rollback as rollback_production

    try:
        result = rollback_production(model_name)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.__dict__))


@main.command("export-model")
@click.option("--model-uri", default="", help="Model to export; empty: the one serving resolves.")
@click.option(
    "--out",
    default="",
    help="Destination folder (default EYE_MODEL_LOCAL_MODEL); replaced whole.",
)
@click.pass_obj
def export_model_command(settings: Settings, model_uri: str, out: str) -> None:
    """Export a registered model to the local fallback folder."""
    from eye_model.registry import export_model, registry_uri_for

    destination = out or settings.local_model
    if not destination:
        raise click.ClickException("no destination: pass --out or set EYE_MODEL_LOCAL_MODEL")
    uri = model_uri or registry_uri_for(settings)
    try:
        path = export_model(uri, destination)
    except Exception as exc:  # any failure (registry, network, disk) is reported plainly
        raise click.ClickException(f"cannot export {uri}: {exc}") from None
    click.echo(json.dumps({"model_uri": uri, "path": str(path)}))


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default=f"http://127.0.0.1:{SERVING_PORT}", help="Model server URL.")
@click.option("--timeout", type=float, default=60.0, help="Request timeout in seconds.")
def score(images: tuple[str, ...], url: str, timeout: float) -> None:
    """Score image files against a running model server and print one JSON line each.

    File names stay on this machine: the server only sees the row number.
    """
    from eye_model.serving import score_files

    predictions = score_files(url, [Path(p) for p in images], timeout=timeout)
    for path, prediction in zip(images, predictions, strict=True):
        click.echo(json.dumps({"file": path, **prediction}))


@main.command()
@click.option(
    "--model-uri",
    default="models:/eye-disease-model/Production",
    help="The served model; its reference profile is the comparison.",
)
@click.option("--window", type=int, default=1000, help="The last N records; 0: all.")
@click.option("--since", default="", help="Only records from this time (epoch s or ISO 8601).")
@click.option("--fail-on-drift", type=BOOL, default=False, help="Exit 1 on a drift alarm.")
@click.option("--alert-url", default="", help="POST a JSON alert on drift alarm (cooldown 1 h).")
@click.option("--records", default="", help="Folder of inference-log parts instead of MLflow.")
@click.option("--labels", default="", help="CSV (request_id,row,label): true accuracy.")
def drift(
    model_uri: str,
    window: int,
    since: str,
    fail_on_drift: bool,
    alert_url: str,
    records: str,
    labels: str,
) -> None:
    """Compare recent predictions with the training reference; log a drift run and report."""
    from eye_model.drift import run_drift_job
    from eye_model.settings import load_settings

    try:
        result = run_drift_job(
            model_uri,
            settings=load_settings(),
            window=window,
            since=since,
            fail_on_drift=fail_on_drift,
            alert_url=alert_url,
            records_path=records,
            labels_path=labels,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.summary()))
    sys.exit(result.exit_code)


@main.command()
@click.option("--url", default=f"http://127.0.0.1:{SERVING_PORT}", help="Model server URL.")
@click.option("--interval", type=float, default=30.0, help="Seconds between checks.")
@click.option("--count", type=int, default=0, help="Number of checks; 0: until interrupted.")
@click.option("--timeout", type=float, default=5.0, help="Seconds to wait for each endpoint.")
def probe(url: str, interval: float, count: int, timeout: float) -> None:
    """Health-check a model server (/ping, /health, /version) and track it (role=probe)."""
    from eye_model.telemetry import run_probe

    settings = click.get_current_context().find_root().obj
    try:
        # Under `mlflow run` the checks go into the run it opened: one probe, one run.
        results = run_probe(
            url,
            interval=interval,
            count=count,
            timeout=timeout,
            settings=settings,
            run_id=settings.mlflow_run_id,
        )
    except KeyboardInterrupt:
        return
    failed = sum(not r.ok for r in results)
    click.echo(json.dumps({"checks": len(results), "failures": failed}))
    if results and not results[-1].ok:
        sys.exit(1)


for _command in (stack, backup, restore, batch_score):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
