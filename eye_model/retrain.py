"""The retraining loop: drift job on the champion → train → register as challenger → gate.

One run tagged ``role=retrain`` holds the decision and links (tags) to the runs it started:
``retrain.drift_run_id``, ``retrain.training_run_id`` and ``retrain.gate_run_id``. The
decision (tag ``retrain.decision``) is one of:

- ``no_drift``: trigger ``on_drift`` and the drift job raised no alarm; nothing else ran.
- ``would_retrain``: dry run; the loop stopped where it would have trained.
- ``promoted``: a new version was trained, registered, and the gate let it into Production.
- ``kept_champion``: the new version stays the challenger (Staging); the gate refused it.
- ``failed``: a step failed; production is as it was, the error is in ``retrain.error``.

Production only ever changes through :func:`eye_model.registry.promote` at the very end,
after the gate passed, so a failure at any step leaves it unchanged. A lock file
(``<EYE_MODEL_HOME>/retrain.lock``) keeps two loops (two cron jobs) from running at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.time import get_current_time_millis

from eye_model.runs import get_or_create_experiment
from eye_model.settings import Settings, hidden_environ
from eye_model.uris import redact_uri

logger = logging.getLogger(__name__)

#: Values of the ``trigger`` parameter.
TRIGGERS = ("on_drift", "always")
#: Name of the lock file in ``EYE_MODEL_HOME``.
LOCK_NAME = "retrain.lock"


class RetrainError(RuntimeError):
    """The loop could not run or a step failed; production is unchanged (the message says)."""


@contextlib.contextmanager
def retrain_lock(path: Path) -> Iterator[None]:
    """Hold the loop's lock file, or raise :class:`RetrainError` when another loop holds it.

    The lock is an ``flock`` on the file: the kernel releases it when its holder dies, so a
    killed loop never blocks the next one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RetrainError(
                f"another retraining loop is running (pid {holder}, lock {path}); "
                "wait for it to finish: production is unchanged"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


@dataclass
class RetrainResult:
    """What one pass of the loop decided and which runs and versions it touched."""

    run_id: str
    decision: str
    model_name: str
    champion_version: str
    production_version: str
    drift_run_id: str = ""
    drift_alarm: bool = False
    training_run_id: str = ""
    challenger_version: str = ""
    gate_run_id: str = ""
    gate_decision: str = ""
    error: str = ""

    def summary(self) -> dict[str, Any]:
        """The JSON line ``eye-model retrain`` prints."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in ("", None)}


def champion_training_config(run_params: dict[str, str], data_dir: str) -> Any:
    """The champion's training parameters (from its run) with the loop's data folder.

    Args:
        run_params: the champion's training run parameters.
        data_dir: the data to train on; empty keeps the champion's own.

    Returns:
        A :class:`eye_model.train.TrainConfig`; ``register_as`` is empty (the loop registers).
    """
    from eye_model.train import TrainConfig

    values: dict[str, Any] = {}
    for spec in dataclasses.fields(TrainConfig):
        if spec.name in run_params and spec.name != "register_as":
            default = getattr(TrainConfig(), spec.name)
            values[spec.name] = type(default)(run_params[spec.name])
    if data_dir:
        values["data_dir"] = data_dir
    return TrainConfig(**values)


def _champion(name: str, client: MlflowClient) -> Any:
    from eye_model.registry import CHAMPION, RegistryError, find_registered_version

    for uri in (f"models:/{name}@{CHAMPION}", f"models:/{name}/Production"):
        try:
            found = find_registered_version(uri, client)
        except (RegistryError, MlflowException):
            continue
        if found is not None:
            return found
    raise RetrainError(
        f"{name!r} has no champion (Production) version to retrain; train, register and "
        "promote one first (the README's quickstart does)"
    )


class _ParentRun:
    """The loop's ``role=retrain`` run: tags as the loop goes, FINISHED or FAILED at the end."""

    def __init__(self, client: MlflowClient, settings: Settings) -> None:
        self.client = client
        if settings.mlflow_run_id:  # under `mlflow run`: the project's run
            self.run_id = settings.mlflow_run_id
        else:
            from mlflow.tracking.context.registry import resolve_tags

            experiment = get_or_create_experiment(client, settings.experiment_name)
            run = client.create_run(experiment, tags=resolve_tags(), run_name="retrain")
            self.run_id = run.info.run_id
        self.tag(role="retrain")

    def tag(self, **tags: object) -> None:
        self.client.log_batch(
            self.run_id, tags=[RunTag(k.replace("__", "."), str(v)) for k, v in tags.items()]
        )

    def metric(self, key: str, value: float) -> None:
        self.client.log_batch(
            self.run_id, metrics=[Metric(key, value, get_current_time_millis(), 0)]
        )


def run_retrain(
    settings: Settings,
    *,
    data_dir: str = "",
    model_name: str = "",
    window: int = 1000,
    trigger: str = "on_drift",
    dry_run: bool = False,
    records: str = "",
    eval_data_dir: str = "",
    tolerance: float = 0.01,
) -> RetrainResult:
    """Run the loop once under the lock; see the module docstring.

    Args:
        settings: tracking URI, experiment, home (the lock) and model name.
        data_dir: the data to train on (ImageFolder); empty keeps the champion's own data.
        model_name: registered model; empty → ``MLFLOW_MODEL_NAME``.
        window: the drift job's window (last N records; 0: all).
        trigger: ``on_drift`` (train only when the drift job raises its alarm) or ``always``.
        dry_run: stop where the loop would train, and say so.
        records: the drift job reads inference-log parts from this folder instead of MLflow.
        eval_data_dir: the gate's data (ImageFolder); empty → the gate's synthetic set.
        tolerance: the largest macro-F1 drop the gate allows.

    Returns:
        The decision, the runs and the versions.

    Raises:
        RetrainError: another loop runs, there is no champion, or a step failed; the
            message says production is unchanged.
    """
    from eye_model.registry import check_model_name

    if trigger not in TRIGGERS:
        raise RetrainError(f"trigger {trigger!r} is unknown; use one of {', '.join(TRIGGERS)}")
    name = check_model_name(model_name or settings.model_name)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    with retrain_lock(settings.home / LOCK_NAME):
        champion = _champion(name, client)
        parent = _ParentRun(client, settings)
        result = RetrainResult(parent.run_id, "failed", name, champion.version, champion.version)
        parent.tag(
            model_name=name,
            retrain__champion_version=champion.version,
            retrain__trigger=trigger,
            retrain__dry_run=str(dry_run).lower(),
        )
        try:
            _run_steps(
                result,
                parent,
                settings,
                champion=champion,
                data_dir=data_dir,
                window=window,
                trigger=trigger,
                dry_run=dry_run,
                records=records,
                eval_data_dir=eval_data_dir,
                tolerance=tolerance,
            )
        except BaseException as exc:
            result.decision = "failed"
            result.error = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
            with contextlib.suppress(Exception):
                parent.tag(retrain__decision="failed", retrain__error=result.error)
                client.set_terminated(parent.run_id, "FAILED")
            if isinstance(exc, RetrainError):
                raise
            step = getattr(exc, "retrain_step", "the loop")
            raise RetrainError(
                f"{step} failed ({result.error}); production is unchanged "
                f"({name} version {champion.version}); run {parent.run_id} has the details"
            ) from exc
        parent.tag(retrain__decision=result.decision)
        client.set_terminated(parent.run_id)
        return result


def _step(name: str, exc: BaseException) -> BaseException:
    exc.retrain_step = name  # type: ignore[attr-defined]
    return exc


def _run_steps(
    result: RetrainResult,
    parent: _ParentRun,
    settings: Settings,
    *,
    champion: Any,
    data_dir: str,
    window: int,
    trigger: str,
    dry_run: bool,
    records: str,
    eval_data_dir: str,
    tolerance: float,
) -> None:
    """Drift, then (when due) training, registration as challenger and the gate."""
    from eye_model.drift import run_drift_job

    own = dataclasses.replace(settings, mlflow_run_id="")  # each step logs its own run
    try:
        drift = run_drift_job(champion.uri, settings=own, window=window, records_path=records)
    except Exception as exc:
        raise _step("the drift job", exc) from exc
    result.drift_run_id, result.drift_alarm = drift.run_id, drift.report.alarm
    parent.tag(retrain__drift_run_id=drift.run_id, retrain__drift_status=drift.report.status)
    parent.metric("drift_alarm", float(drift.report.alarm))
    if trigger == "on_drift" and not drift.report.alarm:
        result.decision = "no_drift"
        return
    if dry_run:
        result.decision = "would_retrain"
        return
    result.training_run_id, result.challenger_version = _train_challenger(
        parent, settings, champion, data_dir
    )
    _gate(result, parent, settings, eval_data_dir, tolerance)


def _train_challenger(
    parent: _ParentRun, settings: Settings, champion: Any, data_dir: str
) -> tuple[str, str]:
    """Train with the champion's parameters, register, move to Staging (the challenger)."""
    from eye_model.registry import promote, register_model
    from eye_model.train import run_training

    client = parent.client
    registered = client.get_model_version(champion.name, champion.version)
    source_run = str(registered.tags.get("source_run_id") or registered.run_id)
    try:
        config = champion_training_config(client.get_run(source_run).data.params, data_dir)
        with hidden_environ(("MLFLOW_RUN_ID",)):
            trained = run_training(config)
    except Exception as exc:
        raise _step("training", exc) from exc
    client.set_tag(trained.run_id, "mlflow.parentRunId", parent.run_id)
    parent.tag(retrain__training_run_id=trained.run_id)
    try:
        version = register_model(trained.model_uri, champion.name, client=client).version
        promote(champion.name, str(version), "Staging", client=client)
    except Exception as exc:
        raise _step("registering the challenger", exc) from exc
    parent.tag(retrain__challenger_version=version)
    return trained.run_id, str(version)


def _gate(
    result: RetrainResult,
    parent: _ParentRun,
    settings: Settings,
    eval_data_dir: str,
    tolerance: float,
) -> None:
    """Run the quality gate on the challenger in a ``role=gate`` run; promote when it passes."""
    from eye_model.registry import PromotionRefused, promote

    client = parent.client
    experiment = client.get_run(parent.run_id).info.experiment_id
    gate_run = client.create_run(
        experiment,
        run_name="gate",
        tags={"role": "gate", "mlflow.parentRunId": parent.run_id},
    ).info.run_id
    result.gate_run_id = gate_run
    parent.tag(retrain__gate_run_id=gate_run)
    name, version = result.model_name, result.challenger_version
    try:
        promotion = promote(
            name,
            version,
            "Production",
            eval_data_dir=eval_data_dir,
            tolerance=tolerance,
            client=client,
        )
        result.decision, result.gate_decision = "promoted", promotion.decision
        result.production_version = version
    except PromotionRefused:
        result.decision, result.gate_decision = "kept_champion", "refused"
    except Exception as exc:
        client.set_terminated(gate_run, "FAILED")
        raise _step("the gate", exc) from exc
    tags = client.get_model_version(name, version).tags
    figures = {
        k: float(tags[f"gate.{k}"])
        for k in ("candidate_macro_f1", "production_macro_f1")
        if f"gate.{k}" in tags
    }
    now = get_current_time_millis()
    client.log_batch(
        gate_run,
        metrics=[Metric(k, v, now, 0) for k, v in figures.items()],
        tags=[
            RunTag("gate.decision", result.gate_decision),
            RunTag("candidate_version", version),
            RunTag("production_version", result.champion_version),
            RunTag("model_name", name),
        ],
    )
    client.set_terminated(gate_run)
    parent.tag(
        retrain__gate_decision=result.gate_decision,
        retrain__production_version=(result.production_version),
    )
    logger.info(
        "retraining of %s on %s: %s", name, redact_uri(settings.tracking_uri), result.decision
    )
