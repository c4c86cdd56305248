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
