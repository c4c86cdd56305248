"""Shared fixtures: each test gets its own tracking store; no test may leave a run active."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

# Quiet TensorFlow's C++ start-up chatter in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_SCRATCH: list[str] = []
_STORE_TEMPLATE: list[Path] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """Run the session in a scratch folder, never in the working tree.

    MLflow puts the artifacts of a SQLite store in ``./mlruns`` and the stack's state in
    ``./.eye-model``, relative to the working folder of the test and of every server it
    starts: without this they would land in the repository.
    """
    _SCRATCH.append(tempfile.mkdtemp(prefix="eye-model-tests-"))
    os.chdir(_SCRATCH[0])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave the scratch folder and remove it."""
    if _SCRATCH:
        os.chdir(session.config.rootpath)
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


def fresh_sqlite_store(path: Path) -> str:
    """A new, empty MLflow SQLite store at ``path``: a copy of one made once per session.

    Making a store runs all of MLflow's schema migrations, 3-5 s of CPU on a slow machine,
    and most tests need one; the copy is the same empty store (the default experiment's
    artifact location is ``./mlruns`` of the session folder either way) in milliseconds.
    """
    if not _STORE_TEMPLATE:
        template = Path(_SCRATCH[0]) / "template" / "mlflow.db"
        template.parent.mkdir()
        mlflow.MlflowClient(f"sqlite:///{template}").search_experiments()
        _STORE_TEMPLATE.append(template)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_STORE_TEMPLATE[0], path)
    return f"sqlite:///{path}"


@pytest.fixture(autouse=True)
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow at a fresh SQLite store of the test's own.

    It lies beside the test's folder, not in it: tests use ``tmp_path`` as an image folder
    or a stack's home and must find there only what they put there.
    """
    uri = fresh_sqlite_store(tmp_path.parent / f"{tmp_path.name}-tracking" / "mlflow.db")
    # mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID; never let it leak between tests.
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    # Servers a test starts keep their inference logs in the test's folder, not in ~/.cache.
    monkeypatch.setenv("EYE_MODEL_TELEMETRY_DIR", str(tmp_path / "telemetry"))
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    if previous is not None:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(autouse=True)
def no_active_run() -> Iterator[None]:
    """Fail any test that leaves an MLflow run active (and end it, so others are not hit)."""
    yield
    run = mlflow.active_run()
    if run is not None:
        mlflow.end_run()
        pytest.fail(f"the test left MLflow run {run.info.run_id} active")


TINY_IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def tiny_network():
    """An untrained small CNN at 64 px: fast to build, deterministic in inference mode."""
    import keras

    from eye_model.network import build_network

    keras.utils.set_random_seed(0)
    return build_network("small_cnn", TINY_IMAGE_SIZE)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory, tiny_network) -> Path:
    """The tiny network saved as an eye-model pyfunc folder."""
    from eye_model.pyfunc import ModelConfig, save_model

    path = tmp_path_factory.mktemp("tiny-model") / "model"
    return save_model(path, tiny_network, ModelConfig(image_size=TINY_IMAGE_SIZE))


@dataclass
class TrainedModel:
    """A model trained once per test session on a small synthetic set."""

    run_id: str
    tracking_uri: str
    model_dir: Path
    metrics: dict[str, float]
    data_dir: Path


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """Train the small CNN for a few epochs on 360 generated 96 px images (about a minute).

    It has its own tracking store; tests that log to theirs reuse its network file.
    """
    from eye_model.train import TrainConfig, run_training

    home = tmp_path_factory.mktemp("trained")
    uri = fresh_sqlite_store(home / "mlflow.db")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("EYE_MODEL_CACHE", str(home / "cache"))
    patch.setenv("MLFLOW_EXPERIMENT_NAME", "eye-model-tests")
    saved_uri = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(uri)
        result = run_training(
            TrainConfig(synthetic_per_class=90, image_size=96, epochs=8, batch_size=32, seed=7)
        )
        model_dir = Path(
            mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(home / "model"))
        )
    finally:
        patch.undo()
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        mlflow.set_tracking_uri(saved_uri)
    # The cache also holds training checkpoints; the data is the synthetic set.
    data_dir = next(p for p in (home / "cache").iterdir() if p.name.startswith("synthetic"))
    return TrainedModel(result.run_id, uri, model_dir, result.metrics, data_dir)
