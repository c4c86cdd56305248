"""The ``eye-model`` commands that close the model's lifecycle loop: ``retrain`` and
``compare``; :mod:`eye_model.cli` adds them to its group."""

from __future__ import annotations

import json
import sys

import click

from eye_model.cli_options import BOOL


@click.command()
@click.option(
    "--data-dir", default="", help="Data to train on (ImageFolder); empty: the champion's."
)
@click.option("--model-name", default="", help="Registered name (default MLFLOW_MODEL_NAME).")
@click.option("--window", type=int, default=1000, help="Drift window: the last N records; 0: all.")
@click.option(
    "--trigger",
    type=click.Choice(["on_drift", "always"]),
    default="on_drift",
    help="Train only when the drift job raises its alarm, or always.",
)
@click.option(
    "--dry-run", type=BOOL, default=False, help="Say what the loop would do; change nothing."
)
@click.option(
    "--records", default="", help="Drift job: inference-log parts folder instead of MLflow."
)
@click.option("--eval-data-dir", default="", help="Gate data (ImageFolder); empty: synthetic.")
@click.option(
    "--tolerance", type=float, default=0.01, help="Largest macro-F1 drop the gate allows."
)
def retrain(
    data_dir: str,
    model_name: str,
    window: int,
    trigger: str,
    dry_run: bool,
    records: str,
    eval_data_dir: str,
    tolerance: float,
) -> None:
    """Drift job on the champion; on drift (or always) train a challenger and gate it.

    Promotes only when the gate passes; any failure leaves production unchanged and exits 1.
    Cron-safe: a lock in EYE_MODEL_HOME refuses a second loop while one runs.
    """
    from eye_model.registry import RegistryError
    from eye_model.retrain import RetrainError, run_retrain

    settings = click.get_current_context().find_root().obj
    try:
        result = run_retrain(
            settings,
            data_dir=data_dir,
            model_name=model_name,
            window=window,
            trigger=trigger,
            dry_run=dry_run,
            records=records,
            eval_data_dir=eval_data_dir,
            tolerance=tolerance,
        )
    except (RetrainError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.summary()))
    sys.exit(0)


@click.command()
@click.option("--model-name", default="", help="Registered name (default MLFLOW_MODEL_NAME).")
@click.option("--window", type=int, default=1000, help="The last N images both scored; 0: all.")
@click.option("--labels", default="", help="CSV (request_id,row,label): true accuracy of each.")
@click.option("--records", default="", help="Folder of shadow-record parts instead of MLflow.")
def compare(model_name: str, window: int, labels: str, records: str) -> None:
    """Compare the champion with its shadow challenger (role=comparison run, HTML report).

    Reads the shadow records of `eye-model serve --shadow`; the run's id is the evidence
    `promote --evidence` takes.
    """
    from eye_model.comparison import run_comparison

    settings = click.get_current_context().find_root().obj
    try:
        result = run_comparison(
            settings, model_name=model_name, window=window, labels_path=labels, records_path=records
        )
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.summary()))
