"""The Model Registry against a real `mlflow server` (SQLite backend) on a free port:
registration, stages with aliases, the quality gate, rollback, serving by stage and alias,
and the local fallback when the tracking server is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from eye_model.config import PROB_COLUMNS
from eye_model.network import build_network
from eye_model.pyfunc import ModelConfig, log_model
from eye_model.registry import (
    PromotionRefused,
    RegistryError,
    promote,
    register_model,
    rollback,
)
from eye_model.stack import (
    find_free_port,
    server_environment,
    start_process,
    stop_process,
    wait_for_http,
)
from eye_model.synthetic import generate_dataset
from tests.conftest import TrainedModel
from tests.helpers import TrackingServer, b64

pytestmark = pytest.mark.slow

NAME = "eye-test-model"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tracking = TrackingServer(tmp_path_factory.mktemp("registry-server")).start()
    try:
        yield {"url": tracking.url, "tracking": tracking}
    finally:
        tracking.stop()


@pytest.fixture(autouse=True)
def use_server(server: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(server["url"]))
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(str(server["url"]))
    mlflow.set_registry_uri(str(server["url"]))


@pytest.fixture(scope="module")
def gate_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gate-data")
    generate_dataset(folder, per_class=10, image_size=160, seed=99, progress=False)
    return folder


@pytest.fixture(scope="module")
def sample_images(gate_data: Path) -> list[str]:
    files = sorted(gate_data.glob("*/*.jpg"))[::5]
    return [b64(p.read_bytes()) for p in files]


def _log_version(network: keras.Model, config: ModelConfig, label: str) -> str:
    with mlflow.start_run(run_name=label) as run:
        mlflow.set_tag("role", "training")
        mlflow.log_metric("test_macro_f1", 0.5)
        log_model(network, config)
    return f"runs:/{run.info.run_id}/model"


@pytest.fixture(scope="module")
def versions(server: dict[str, object], trained_model: TrainedModel) -> dict[str, str]:
    """v1 and v2: the trained network (v2 with another temperature, so its answers differ
    while its classes do not); v3: an untrained network, deliberately worse."""
    mlflow.set_tracking_uri(str(server["url"]))
    mlflow.set_registry_uri(str(server["url"]))
    mlflow.set_experiment("registry-tests")
    artifacts = trained_model.model_dir / "artifacts"
    network = keras.saving.load_model(artifacts / "network.keras", compile=False)
    config = ModelConfig.from_json((artifacts / "config.json").read_text())
    uris = {"v1": _log_version(network, config, "v1")}
    hotter = ModelConfig.from_json(config.to_json())
    hotter.temperature = config.temperature * 2.5
    uris["v2"] = _log_version(network, hotter, "v2")
    keras.utils.set_random_seed(123)
    untrained = build_network("small_cnn", config.image_size)
    uris["v3"] = _log_version(untrained, config, "v3")
    for key in ("v1", "v2", "v3"):
        register_model(uris[key], NAME)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    return uris


def _stages(client: MlflowClient) -> dict[str, str]:
    versions = client.search_model_versions(f"name='{NAME}'")
    return {str(v.version): v.current_stage for v in versions}


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def test_registered_versions_carry_provenance(versions: dict[str, str]) -> None:
    client = MlflowClient()
    version = client.get_model_version(NAME, "1")
    assert version.tags["source_run_id"] == versions["v1"].split("/")[1]
    assert version.tags["test_macro_f1"] == "0.5000"
    assert version.tags["git_commit"]
    assert "data" in version.tags
    assert "Test metrics" in version.description


def test_registering_a_run_twice_is_refused(versions: dict[str, str]) -> None:
    with pytest.raises(RegistryError, match="already registered as version 1"):
        register_model(versions["v1"], NAME)
    assert len(MlflowClient().search_model_versions(f"name='{NAME}'")) == 3


def test_promotion_lifecycle(versions: dict[str, str], gate_data: Path) -> None:
    client = MlflowClient()
    promote(NAME, "1", "Production", eval_data_dir=str(gate_data))
    promote(NAME, "2", "staging")
    assert _stages(client) == {"1": "Production", "2": "Staging", "3": "None"}
    assert _aliases(client) == {"champion": "1", "challenger": "2"}

    # The deliberately worse v3 is refused by the gate, which records why.
    with pytest.raises(PromotionRefused, match="macro-F1 .* below Production version 1"):
        promote(NAME, "3", "Production", eval_data_dir=str(gate_data))
    tags = client.get_model_version(NAME, "3").tags
    assert tags["gate.decision"] == "refused"
    assert float(tags["gate.candidate_macro_f1"]) < float(tags["gate.production_macro_f1"]) - 0.01
    assert _stages(client)["1"] == "Production"

    # ... and accepted with force, archiving v1.
    forced = promote(NAME, "3", "Production", force=True, eval_data_dir=str(gate_data))
    assert forced.decision == "forced"
    assert _stages(client) == {"1": "Archived", "2": "Staging", "3": "Production"}
    assert _aliases(client)["champion"] == "3"

    # Rollback returns v1 to Production.
    back = rollback(NAME)
    assert back.version == "1"
    assert _stages(client)["1"] == "Production"
    assert _stages(client)["3"] == "Archived"
    assert _aliases(client)["champion"] == "1"

    # v2 (same classes as v1) passes the gate; v1 is archived and champion moves.
    result = promote(NAME, "2", "Production", eval_data_dir=str(gate_data))
    assert result.decision == "accepted"
    assert result.candidate_macro_f1 == pytest.approx(result.production_macro_f1)
    assert _stages(client) == {"1": "Archived", "2": "Production", "3": "Archived"}
    assert _aliases(client) == {"champion": "2"}  # nothing in Staging: no challenger
    assert client.get_model_version(NAME, "2").tags["gate.decision"] == "accepted"

    # v1 back to Staging becomes the challenger.
    promote(NAME, "1", "Staging")
    assert _aliases(client) == {"champion": "2", "challenger": "1"}


def test_unknown_stage_and_version_are_clear_errors(versions: dict[str, str]) -> None:
    with pytest.raises(RegistryError, match="use one of Staging, Production, Archived"):
        promote(NAME, "1", "Prod")
    with pytest.raises(RegistryError, match="has no version 9"):
        promote(NAME, "9", "Staging")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "eye-model"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote", "--version", "1.5", "--stage", "Production"], "'1.5' is not a version"),
        (["promote", "--version", "abc", "--stage", "Production"], "'abc' is not a version"),
        (["promote", "--version", "0", "--stage", "Staging"], "'0' is not a version"),
        (["promote", "--version", "9", "--stage", "Staging"], "has no version 9"),
        (["promote", "--model-name", "../../x", "--version", "1", "--stage", "Staging"], "cannot"),
        (["register", "--model-uri", "garbage"], "'garbage' is not a logged model"),
        (["register", "--model-uri", "runs:/0123456789abcdef/model"], "does not exist"),
        (["rollback", "--model-name", "no-such-model"], "has no Production version"),
    ],
)
def test_cli_typos_change_nothing_and_print_one_line(
    versions: dict[str, str], args: list[str], message: str
) -> None:
    """A typo never moves a version: one line naming the problem, no traceback, exit 1."""
    client = MlflowClient()
    before = (_stages(client), _aliases(client))
    if args[0] == "promote" and "--model-name" not in args:
        args = [*args, "--model-name", NAME]
    result = _cli(*args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert (_stages(client), _aliases(client)) == before


@pytest.mark.parametrize("name", ["o'neil", 'say "hi"', "50% off", "with space", "ünï-cødé"])
def test_names_with_quotes_and_symbols_work(versions: dict[str, str], name: str) -> None:
    """Registry search filters quote names correctly: one registration, then promotion."""
    run_id = versions["v1"].split("/")[1]
    version = register_model(versions["v1"], name)
    with pytest.raises(RegistryError, match="already registered"):
        register_model(versions["v1"], name)
    result = promote(name, str(version.version), "Staging")
    assert result.aliases == {"champion": None, "challenger": str(version.version)}
    found = MlflowClient().get_model_version(name, str(version.version))
    assert found.tags["source_run_id"] == run_id


def test_debug_shows_the_traceback(versions: dict[str, str]) -> None:
    plain = _cli("promote", "--model-name", NAME, "--version", "1", "--stage", "Staging")
    assert plain.returncode == 0, plain.stderr
    dead = f"http://127.0.0.1:{find_free_port()}"
    bad_server = {**os.environ, "MLFLOW_TRACKING_URI": dead, "MLFLOW_REGISTRY_URI": dead}
    args = ["promote", "--model-name", NAME, "--version", "1", "--stage", "Staging"]
    command = [str(Path(sys.executable).parent / "eye-model")]
    quiet = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=bad_server, timeout=120
    )
    assert quiet.returncode == 1, quiet.stdout + quiet.stderr
    assert "no tracking server answers at" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    loud = subprocess.run(
        [*command, "--debug", *args], capture_output=True, text=True, env=bad_server, timeout=120
    )
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr


def _expected(model_uri: str, images: list[str]) -> np.ndarray:
    out = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"image": images}))
    return out[list(PROB_COLUMNS)].to_numpy(float)


def _serve(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = find_free_port()
    command = [str(Path(sys.executable).parent / "eye-model"), "serve", "--port", str(port), *args]
    process = start_process(command, log_path=log, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ping", timeout=180, process=process)
    except RuntimeError:
        stop_process(process)
        pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
    return process, url


def _answer(url: str, images: list[str]) -> np.ndarray:
    payload = {"dataframe_split": {"columns": ["image"], "data": [[v] for v in images]}}
    response = requests.post(f"{url}/invocations", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    return np.array([[row[c] for c in PROB_COLUMNS] for row in rows])


def test_serving_by_stage_and_alias(
    versions: dict[str, str], sample_images: list[str], tmp_path: Path, server: dict[str, object]
) -> None:
    v1 = _expected(f"models:/{NAME}/1", sample_images)
    v2 = _expected(f"models:/{NAME}/2", sample_images)
    assert not np.allclose(v1, v2, atol=1e-3)
    env = {
        "MLFLOW_TRACKING_URI": str(server["url"]),
        "ENABLE_MODEL_REGISTRY": "true",
        "MLFLOW_MODEL_NAME": NAME,
        "MODEL_STAGE": "Production",
        "ENABLE_MLFLOW_TRACKING": "false",
    }
    for args, expected, says in (
        ([], v2, f"models:/{NAME}/Production is version 2"),
        (["--alias", "challenger"], v1, f"models:/{NAME}@challenger is version 1"),
    ):
        log = tmp_path / f"serve-{len(args)}.log"
        process, url = _serve(args, env, log)
        try:
            np.testing.assert_allclose(_answer(url, sample_images), expected, atol=1e-6)
        finally:
            stop_process(process)
        assert says in log.read_text()


def test_plain_mlflow_models_serve_by_alias(
    versions: dict[str, str], sample_images: list[str], tmp_path: Path
) -> None:
    port = find_free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{NAME}@champion",
        "-p",
        str(port),
        "--env-manager",
        "local",
    ]
    env = server_environment(
        {
            "MLFLOW_EXPERIMENT_NAME": "plain-serving",
            "EYE_MODEL_TELEMETRY_DIR": str(tmp_path / "telemetry"),
        }
    )
    process = start_process(command, log_path=tmp_path / "plain.log", env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=180, process=process)
        answer = _answer(f"http://127.0.0.1:{port}", sample_images)
    finally:
        stop_process(process)
    np.testing.assert_allclose(answer, _expected(f"models:/{NAME}/2", sample_images), atol=1e-6)
    # Served without eye-model's help, the serving run still names the registered version.
    client = MlflowClient()
    experiment = client.get_experiment_by_name("plain-serving")
    assert experiment is not None, (tmp_path / "plain.log").read_text()[-3000:]
    (run,) = client.search_runs([experiment.experiment_id], "tags.role = 'serving'")
    assert run.data.tags["model_name"] == NAME
    assert run.data.tags["model_version"] == "2"
    assert run.data.tags["model_uri"] == f"models:/{NAME}/2"
    assert run.data.tags["source_run_id"] == versions["v2"].split("/")[1]


def test_fallback_to_the_local_copy_when_the_tracking_server_is_down(
    versions: dict[str, str], sample_images: list[str], tmp_path: Path, server: dict[str, object]
) -> None:
    local = tmp_path / "fallback-model"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": str(server["url"]),
        "ENABLE_MODEL_REGISTRY": "true",
        "MLFLOW_MODEL_NAME": NAME,
        "EYE_MODEL_LOCAL_MODEL": str(local),
        "ENABLE_MLFLOW_TRACKING": "false",
    }
    exported = subprocess.run(
        [str(Path(sys.executable).parent / "eye-model"), "export-model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["model_uri"] == f"models:/{NAME}/Production"
    expected = _expected(str(local), sample_images)
    np.testing.assert_allclose(expected, _expected(f"models:/{NAME}/2", sample_images), atol=1e-9)

    server["tracking"].stop()  # the tracking server is now down
    log = tmp_path / "fallback.log"
    process, url = _serve([], env, log)
    try:
        np.testing.assert_allclose(_answer(url, sample_images), expected, atol=1e-6)
    finally:
        stop_process(process)
    text = log.read_text()
    assert "serving the local copy" in text
    assert str(local) in text

    # Without a local copy either, serving exits with a clear error.
    env["EYE_MODEL_LOCAL_MODEL"] = str(tmp_path / "missing")
    failed = subprocess.run(
        [str(Path(sys.executable).parent / "eye-model"), "serve", "--port", str(find_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode != 0
    assert "no local fallback" in failed.stderr
