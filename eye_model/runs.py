"""What the entry points share about the MLflow runs they log into."""

from __future__ import annotations

from typing import Any

import mlflow


def log_new_params(run_id: str, params: dict[str, Any]) -> None:
    """Log the parameters the run does not hold yet.

    ``mlflow run`` logs the entry point's parameters itself (an empty string as ``''``);
    logging them again with another spelling would be refused as a change.
    """
    existing = mlflow.get_run(run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


#: The ``role`` tag of the run ``mlflow run`` opens for each entry point's command.
ENTRY_POINT_ROLES: dict[str, str] = {
    "train": "training",
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
