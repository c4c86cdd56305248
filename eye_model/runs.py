"""What the entry points share about the MLflow runs they log into."""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param

from eye_model.settings import env_name


def log_new_params(
    run_id: str, params: dict[str, Any], *, client: MlflowClient | None = None
) -> None:
    """Log the parameters the run does not hold yet; empty values (None, "") are left out.

    ``mlflow run`` logs the entry point's parameters itself (an empty string as ``''``);
    logging them again with another spelling would be refused as a change.

    Args:
        run_id: the run.
        params: parameter name → value (logged as ``str(value)``).
        client: log through this client; through the active run (fluent API) when None.
    """
    params = {k: v for k, v in params.items() if v is not None and str(v) != ""}
    if client is None:
        existing = mlflow.get_run(run_id).data.params
        mlflow.log_params({k: v for k, v in params.items() if k not in existing})
        return
    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    if new:
        client.log_batch(run_id, params=new)


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of the experiment ``name``, created when missing (as ``mlflow.set_experiment``).

    Args:
        client: the tracking server's client.
        name: the experiment name.

    Returns:
        The experiment id.

    Raises:
        ValueError: the experiment exists but is deleted.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"experiment {name!r} is deleted; restore it in the MLflow UI "
            f"or set {env_name('experiment_name')} to another name"
        )
    return str(experiment.experiment_id)


#: The ``role`` tag of the run ``mlflow run`` opens for each entry point's command.
ENTRY_POINT_ROLES: dict[str, str] = {
    "train": "training",
    "tune": "tuning",
    "synthesize": "synthesize",
    "register": "register",
    "promote": "promote",
    "rollback": "rollback",
    "export-model": "export",
    "probe": "probe",
    "drift": "drift",
    "batch-score": "batch_score",
}


def tag_entry_point_run(tracking_uri: str, run_id: str, command: str) -> None:
    """Tag the run ``mlflow run`` opened for ``command`` with its role (every run has one)."""
    role = ENTRY_POINT_ROLES.get(command)
    if not (run_id and role):
        return
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_tag(run_id, "role", role)
