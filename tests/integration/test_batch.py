"""Batch scoring on Spark (local[2]) via ``mlflow.pyfunc.spark_udf``: same answers as in-process.

One SparkSession serves the module. The archive is a few hundred generated 64 px fundus
JPEGs in nested folders plus problem files: a truncated JPEG, random bytes named .jpg, empty
files, a JPEG named .txt, hidden files, upper-case extensions and names with spaces and '+'.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from eye_model.batch import (
    BATCH_OUTPUT_COLUMNS,
    DEFAULT_FILE_OPEN_COST,
    FILE_COST_IN_AVERAGE_FILES,
    IMAGE_EXTENSIONS,
    plan_splits,
)
from eye_model.config import PROB_COLUMNS
from eye_model.synthetic import generate_dataset
from tests.helpers import draw_fundus_like, encode

PER_CLASS = 50
SPARK_MASTER = "local[2]"
# Files Spark must read and score as errors, relative to the archive root.
CORRUPT_FILES = (
    "site-b/2024/truncated.jpg",
    "site-b/2024/random-bytes.jpg",
    "site-b/2024/empty.png",
    "site-b/empty copy+1.png",
)
# Files Spark must skip: not an image extension, or hidden from Hadoop ('.' or '_').
SKIPPED_FILES = ("site-b/notes.txt", "site-b/.hidden.jpg", "site-b/_thumbnail.jpg")
# Valid images with awkward names or extensions, which must be scored.
AWKWARD_FILES = ("site-b/UPPER.JPG", "site-b/2024/Mixed.Png", "site-b/a b+c.jpeg")


def spark_marks(function: Any) -> Any:
    """Mark a test as slow and needing PySpark and Java."""
    return pytest.mark.slow(pytest.mark.spark(function))


def _java_available() -> bool:
    return bool(shutil.which("java") or os.environ.get("JAVA_HOME"))


@dataclass
class Archive:
    """The generated archive: its root, and the files a reader must score, by local path."""

    root: Path
    images: list[Path]


@dataclass
class BatchRun:
    """One scoring job over the whole archive, and what it left behind."""

    summary: dict[str, Any]
    output: Path
    scores: pd.DataFrame  # indexed by local path
    stderr: str
    tracking_uri: str
    telemetry_dir: Path


def _is_scored(path: Path) -> bool:
    """Whether a reader should score ``path`` (extension list, Hadoop's hidden-file rule)."""
    extension = path.suffix.lower().lstrip(".")
    return extension in IMAGE_EXTENSIONS and not path.name.startswith((".", "_"))


def _local_path(uri: str) -> Path:
    assert uri.startswith("file:/"), uri
    return Path(uri.removeprefix("file:"))


def _read_scores(output: Path) -> pd.DataFrame:
    frame = pd.read_parquet(output)
    frame.index = [_local_path(uri) for uri in frame.pop("path")]
    return frame


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("archive")
    generate_dataset(root / "site-a", PER_CLASS, image_size=64, seed=3, progress=False)
    jpeg = (root / "site-a" / "normal" / "normal_00000.jpg").read_bytes()
    png = encode(draw_fundus_like(80, seed=5), "PNG")
    contents = {
        "site-b/2024/truncated.jpg": jpeg[: len(jpeg) // 2],
        "site-b/2024/random-bytes.jpg": np.random.default_rng(0).bytes(4096),
        "site-b/2024/empty.png": b"",
        "site-b/empty copy+1.png": b"",
        "site-b/notes.txt": jpeg,  # a readable image: only its name keeps it out
        "site-b/.hidden.jpg": jpeg,
        "site-b/_thumbnail.jpg": jpeg,
        "site-b/UPPER.JPG": jpeg,
        "site-b/2024/Mixed.Png": png,
        "site-b/a b+c.jpeg": encode(draw_fundus_like(90, seed=6), "JPEG"),
    }
    for name, data in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    images = sorted(path for path in root.rglob("*") if path.is_file() and _is_scored(path))
    assert len(images) == 4 * PER_CLASS + len(CORRUPT_FILES) + len(AWKWARD_FILES)
    return Archive(root, images)


@pytest.fixture(scope="module")
def reference(archive: Archive, tiny_model_path: Path) -> pd.DataFrame:
    """In-process pyfunc predictions on the same files' bytes, indexed by local path."""
    model = mlflow.pyfunc.load_model(str(tiny_model_path))
    frame = pd.DataFrame({"image": [path.read_bytes() for path in archive.images]})
    predictions = model.predict(frame)
    predictions.index = archive.images
    return predictions


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("pyspark")
    if not _java_available():
        pytest.skip("Spark needs Java (java on PATH or JAVA_HOME)")
    from eye_model.batch import get_or_create_session

    home = tmp_path_factory.mktemp("spark")
    session = get_or_create_session(
        SPARK_MASTER,
        app_name="eye-model-tests",
        conf={
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "2",
            "spark.local.dir": str(home / "local"),
            "spark.sql.warehouse.dir": str(home / "warehouse"),
            "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={home}",
            # Were the pyfunc to track predictions on executors, this would make it (and write
            # its inference log here): batch scoring must override it.
            "spark.executorEnv.EYE_MODEL_TELEMETRY": "always",
            "spark.executorEnv.EYE_MODEL_TELEMETRY_DIR": str(home / "telemetry"),
        },
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def batch_run(
    spark: Any, archive: Archive, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> BatchRun:
    """Score the whole archive once, with its own tracking store and stderr captured."""
    from eye_model.batch import score_with_spark

    home = tmp_path_factory.mktemp("batch-run")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    saved_uri = mlflow.get_tracking_uri()
    stderr = io.StringIO()
    output = home / "scores.parquet"
    try:
        mlflow.set_tracking_uri(tracking_uri)
        with contextlib.redirect_stderr(stderr):
            summary = score_with_spark(
                str(archive.root),
                str(output),
                str(tiny_model_path),
                SPARK_MASTER,
                spark=spark,
                progress_interval=0.5,
            )
    finally:
        mlflow.set_tracking_uri(saved_uri)
    telemetry_dir = Path(
        spark.sparkContext.getConf().get("spark.executorEnv.EYE_MODEL_TELEMETRY_DIR")
    )
    return BatchRun(
        summary, output, _read_scores(output), stderr.getvalue(), tracking_uri, telemetry_dir
    )


def _assert_same_predictions(scores: pd.DataFrame, reference: pd.DataFrame) -> None:
    """Spark's rows equal the in-process rows for the same files (set, classes, probs, errors)."""
    assert sorted(scores.index) == sorted(reference.index)
    scores = scores.loc[reference.index]
    failed = reference["error"].notna()
    assert scores["error"].notna().tolist() == failed.tolist()
    assert scores.loc[failed, "error"].tolist() == reference.loc[failed, "error"].tolist()
    assert scores.loc[failed, ["predicted_class", "confidence", *PROB_COLUMNS]].isna().all().all()
    ok = ~failed
    assert (
        scores.loc[ok, "predicted_class"].tolist() == reference.loc[ok, "predicted_class"].tolist()
    )
    for column in ("confidence", *PROB_COLUMNS):
        np.testing.assert_allclose(
            scores.loc[ok, column].to_numpy(np.float64),
            reference.loc[ok, column].to_numpy(np.float64),
            rtol=0,
            atol=1e-5,
            err_msg=column,
        )


@spark_marks
def test_spark_scores_equal_in_process_predictions(
    batch_run: BatchRun, reference: pd.DataFrame
) -> None:
    _assert_same_predictions(batch_run.scores, reference)
    # Images differ by far more than the tolerance, so a row given another file's answer fails.
    ok = reference["error"].isna()
    assert reference.loc[ok, list(PROB_COLUMNS)].astype(float).std().max() > 1e-3
    assert batch_run.summary["rows"] == len(reference)
    assert (
        batch_run.summary["errors"] == int(reference["error"].notna().sum()) == len(CORRUPT_FILES)
    )


@spark_marks
def test_output_holds_path_and_the_rest_columns(batch_run: BatchRun) -> None:
    schema = pq.read_schema(next(batch_run.output.glob("*.parquet")))
    assert tuple(schema.names) == BATCH_OUTPUT_COLUMNS
    types = {field.name: str(field.type) for field in schema}
    assert types["path"] == types["predicted_class"] == types["error"] == "string"
    assert {types[column] for column in ("confidence", *PROB_COLUMNS)} == {"double"}
    ok = batch_run.scores[batch_run.scores["error"].isna()]
    np.testing.assert_allclose(ok[list(PROB_COLUMNS)].sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(ok[list(PROB_COLUMNS)].max(axis=1), ok["confidence"], atol=0)
    assert set(batch_run.summary) >= {"rows", "errors", "seconds", "output", "tasks"}
    assert batch_run.summary["output"] == str(batch_run.output)
    assert batch_run.summary["seconds"] > 0
    # Every core got work, and tasks are few (each loads the model).
    assert batch_run.summary["tasks"] == 2


@spark_marks
def test_corrupt_files_are_error_rows_and_the_job_succeeds(
    batch_run: BatchRun, archive: Archive
) -> None:
    errors = batch_run.scores[batch_run.scores["error"].notna()]
    assert sorted(errors.index) == sorted(archive.root / name for name in CORRUPT_FILES)
    assert errors[["predicted_class", "confidence", *PROB_COLUMNS]].isna().all().all()
    # Empty files are skipped by Spark's file scan; the job gives them their row back.
    empty = errors.loc[
        [archive.root / "site-b/2024/empty.png", archive.root / "site-b/empty copy+1.png"]
    ]
    assert empty["error"].str.contains("empty").all()
    assert errors.loc[archive.root / "site-b/2024/truncated.jpg", "error"]
    assert batch_run.summary["errors"] == len(CORRUPT_FILES)


@spark_marks
def test_non_image_and_hidden_files_are_skipped(batch_run: BatchRun, archive: Archive) -> None:
    scored = set(batch_run.scores.index)
    assert not scored & {archive.root / name for name in SKIPPED_FILES}
    awkward = [archive.root / name for name in AWKWARD_FILES]
    assert set(awkward) <= scored
    assert batch_run.scores.loc[awkward, "error"].isna().all()


@spark_marks
def test_progress_line_reaches_stderr(batch_run: BatchRun) -> None:
    lines = re.findall(r"batch-score: (\d+)/(\d+) tasks done \((\d+)%\)", batch_run.stderr)
    assert lines, batch_run.stderr[-2000:]
    done, total, percent = (int(x) for x in lines[-1])
    assert done == total == batch_run.summary["tasks"] and percent == 100
    # Progress is counts only: no file name may leak into the log.
    assert "site-a" not in batch_run.stderr and ".jpg" not in batch_run.stderr


@spark_marks
def test_scoring_creates_no_mlflow_run_and_no_telemetry(batch_run: BatchRun, spark: Any) -> None:
    from pyspark.sql.functions import udf

    # The premise: executors are told to track always, so only the job's override stops it.
    worker_mode = udf(lambda _: os.environ.get("EYE_MODEL_TELEMETRY"), "string")
    assert spark.range(1).select(worker_mode("id")).first()[0] == "always"

    client = mlflow.MlflowClient(tracking_uri=batch_run.tracking_uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments]) if experiments else []
    assert [run.info.run_id for run in runs] == []
    assert [e.name for e in experiments] in ([], ["Default"])
    written = list(batch_run.telemetry_dir.rglob("*")) if batch_run.telemetry_dir.exists() else []
    assert written == []


@spark_marks
def test_glob_input_scores_only_the_matching_files(
    spark: Any, archive: Archive, reference: pd.DataFrame, tiny_model_path: Path, tmp_path: Path
) -> None:
    from eye_model.batch import score_with_spark

    output = tmp_path / "glaucoma.parquet"
    summary = score_with_spark(
        f"{archive.root}/site-*/g*",
        str(output),
        str(tiny_model_path),
        SPARK_MASTER,
        spark=spark,
        progress_interval=0,
    )
    expected = [path for path in archive.images if path.parent.name == "glaucoma"]
    assert len(expected) == PER_CLASS
    assert summary["rows"] == PER_CLASS and summary["errors"] == 0
    _assert_same_predictions(_read_scores(output), reference.loc[expected])
    assert mlflow.search_runs(search_all_experiments=True).empty


_RECORDER = '''
import mlflow
import pandas as pd
from mlflow.models import set_model
from pyspark import TaskContext

LOG = {log!r}
PROBS = {probs!r}


class BatchRecorder(mlflow.pyfunc.PythonModel):
    """Appends "<partition> <rows>" per predict call; answers 'normal' for every image."""

    def predict(self, context, model_input, params=None):
        task = TaskContext.get()
        with open(LOG, "a") as log:
            log.write(f"{{task.partitionId() if task else -1}} {{len(model_input)}}\\n")
        n = len(model_input)
        frame = pd.DataFrame({{"predicted_class": ["normal"] * n, "confidence": [1.0] * n}})
        for column in PROBS:
            frame[column] = 1.0 if column == "prob_normal" else 0.0
        frame["fundus_check"] = ["pass"] * n
        frame["ood_score"] = [0.0] * n
        frame["warning"] = [None] * n
        frame["error"] = [None] * n
        return frame


set_model(BatchRecorder())
'''


@spark_marks
def test_the_model_gets_whole_arrow_batches(spark: Any, archive: Archive, tmp_path: Path) -> None:
    from eye_model.batch import score_with_spark
    from eye_model.pyfunc import build_signature

    log = tmp_path / "calls.log"
    script = tmp_path / "recorder.py"
    script.write_text(_RECORDER.format(log=str(log), probs=list(PROB_COLUMNS)))
    model = tmp_path / "recorder"
    mlflow.pyfunc.save_model(
        str(model),
        python_model=str(script),
        signature=build_signature(),
        pip_requirements=["mlflow"],
    )
    batch = 64
    summary = score_with_spark(
        str(archive.root / "site-a"),
        str(tmp_path / "out.parquet"),
        str(model),
        SPARK_MASTER,
        spark=spark,
        records_per_batch=batch,
        progress_interval=0,
    )
    calls = [tuple(int(x) for x in line.split()) for line in log.read_text().splitlines()]
    sizes: dict[int, list[int]] = {}
    for partition, rows in calls:
        sizes.setdefault(partition, []).append(rows)
    assert sum(rows for _, rows in calls) == summary["rows"] == 4 * PER_CLASS
    assert len(sizes) == summary["tasks"] == 2
    # Tasks get about equal numbers of photos, whatever their file sizes.
    per_task = sorted(sum(rows) for rows in sizes.values())
    assert per_task[1] <= 1.15 * per_task[0], per_task
    for partition, rows in sizes.items():
        # One call per Arrow batch: full batches, then the partition's remainder.
        assert rows[:-1] == [batch] * (len(rows) - 1), (partition, rows)
        assert 0 < rows[-1] <= batch
        assert len(rows) == math.ceil(sum(rows) / batch)


@spark_marks
def test_existing_output_is_refused_before_any_work(spark: Any, tmp_path: Path) -> None:
    from eye_model.batch import score_with_spark

    (tmp_path / "images").mkdir()
    (tmp_path / "out.parquet").mkdir()
    with pytest.raises(FileExistsError, match=r"out\.parquet.*overwrite"):
        score_with_spark(
            str(tmp_path / "images"), str(tmp_path / "out.parquet"), "models:/none/1", spark=spark
        )


@spark_marks
def test_missing_input_is_named(spark: Any, tmp_path: Path) -> None:
    from eye_model.batch import score_with_spark

    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        score_with_spark(
            str(tmp_path / "no-such-folder"),
            str(tmp_path / "o.parquet"),
            "models:/none/1",
            spark=spark,
        )


@spark_marks
def test_tasks_get_equal_numbers_of_photos_whatever_their_file_sizes(
    spark: Any, tmp_path: Path
) -> None:
    """Scoring costs per photo, not per byte: packing by bytes gave the small files' task
    more than its share of photos."""
    from pyspark.sql import functions as F

    from eye_model.batch import describe_listing, read_images, spark_settings

    rng = np.random.default_rng(0)
    for i in range(90):
        size = 30_000 if i < 30 else 15_000  # one camera's large files, another's small
        (tmp_path / f"photo-{i:03d}.jpg").write_bytes(rng.bytes(size))
    images = read_images(spark, str(tmp_path))
    files, total_bytes = describe_listing(images)
    with spark_settings(spark, plan_splits(files, total_bytes, parallelism=2)):
        counts = (
            read_images(spark, str(tmp_path))
            .groupBy(F.spark_partition_id().alias("task"))
            .count()
            .collect()
        )
    per_task = sorted(row["count"] for row in counts)
    assert len(per_task) == 2 and sum(per_task) == 90
    assert per_task[1] <= 1.15 * per_task[0], per_task


def test_plan_splits_gives_every_core_balanced_work() -> None:
    files, size, cost = 600, 600 * 20_000, 8 * 1024
    settings = plan_splits(files, size, parallelism=2, images_per_task=1024, file_open_cost=cost)
    split = int(settings["spark.sql.files.maxPartitionBytes"])
    weight = size + files * cost
    # Two tasks of ~300 images: a split just over half of what Spark packs.
    assert weight / 2 < split < weight / 2 * 1.1
    assert settings["spark.sql.files.minPartitionNum"] == "1"
    # A large archive: tasks of about 1,024 images, a whole number of waves of 2. Each
    # file counts as FILE_COST_IN_AVERAGE_FILES average files on top of its bytes.
    settings = plan_splits(100_000, 100_000 * 20_000, parallelism=2, images_per_task=1024)
    cost = int(settings["spark.sql.files.openCostInBytes"])
    assert cost == FILE_COST_IN_AVERAGE_FILES * 20_000
    tasks = (100_000 * (20_000 + cost)) / int(settings["spark.sql.files.maxPartitionBytes"])
    assert 90 < tasks <= 98
    # Tiny files: the floor holds.
    settings = plan_splits(1_000, 1_000 * 100, parallelism=2)
    assert int(settings["spark.sql.files.openCostInBytes"]) == DEFAULT_FILE_OPEN_COST
