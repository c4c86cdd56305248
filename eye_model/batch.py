"""Batch scoring of an image archive on Apache Spark through ``mlflow.pyfunc.spark_udf``.

The registered pyfunc runs unchanged on the executors: Spark lists and reads the
image files (``binaryFile`` source, recursively, image extensions only), hands
them to the model in Arrow batches (one ``predict`` call per batch; the network
then runs in chunks of 32), and writes one Parquet row per file with ``path``
and the REST API's output columns. A corrupt file becomes a row with an
``error``; it never fails the job.

Nothing here logs to MLflow: the pyfunc tracks predictions only inside a
scoring server, and the UDF is told never to (telemetry mode ``never``)
even when an ``env_manager`` other than ``local`` starts one per executor.
File paths stay in the user's own Parquet output.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from eye_model.config import ENV_MANAGERS
from eye_model.input_frame import IMAGE_COLUMN
from eye_model.scored import OUTPUT_COLUMNS, TEXT_COLUMNS
from eye_model.settings import settings_environ

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

#: File extensions read as images (matched in any case).
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "gif")
#: Columns of the Parquet output, in order: the file's URI, then the REST API's columns.
BATCH_OUTPUT_COLUMNS: tuple[str, ...] = ("path", *OUTPUT_COLUMNS)
#: Spark type of the UDF's result: the REST API's columns (no ``image_id``: none is sent).
RESULT_TYPE = ", ".join(
    f"{column} {'string' if column in TEXT_COLUMNS else 'double'}" for column in OUTPUT_COLUMNS
)

#: Rows per Arrow batch, i.e. images per ``predict`` call (a multiple of the pyfunc's 32).
#: Spark also caps a batch at ``spark.sql.execution.arrow.maxBytesPerBatch`` (64 MiB).
DEFAULT_RECORDS_PER_BATCH = 256
#: Images per Spark task. In local mode ``spark_udf`` loads the model in every task (the
#: pyfunc keeps the compiled network per Python worker, so only the first task of a worker
#: pays 0.3-0.6 s); tasks are still long, and at least as many as cores.
DEFAULT_IMAGES_PER_TASK = 1024
#: Smallest cost Spark adds per file when packing files into tasks, in bytes.
DEFAULT_FILE_OPEN_COST = 8 * 1024
#: The cost of scoring one photo is mostly the network's, which sees every photo at the same
#: size: Spark is told that opening a file costs this many average files' bytes, so tasks get
#: about equal numbers of photos. Packing by bytes alone gave one task of 800 photos 484 of
#: them (the small files) and left a core idle for a fifth of the job.
FILE_COST_IN_AVERAGE_FILES = 4
# Spark packs files into a split until the next would overflow it; this much slack keeps it
# from spilling a sliver of the input into one more, nearly empty, task.
_SPLIT_SLACK = 1.05
#: Seconds between progress lines.
DEFAULT_PROGRESS_INTERVAL = 10.0
#: Environment of the UDF on every executor: predictions are never tracked from Spark.
UDF_ENVIRONMENT: dict[str, str] = settings_environ(telemetry_mode="never")


# -- session and settings ------------------------------------------------------------------


def get_or_create_session(
    master: str,
    app_name: str = "eye-model batch-score",
    conf: dict[str, str] | None = None,
) -> SparkSession:
    """A SparkSession on ``master``, unless ``spark-submit`` already chose one.

    Args:
        master: Spark master URL (``local[*]``, ``spark://host:7077``, ``yarn``,
            ``k8s://https://host:443``).
        app_name: the application's name in the cluster UI.
        conf: further Spark settings of a new session (Spark's console progress bar is off
            unless set here).

    Returns:
        The session. Under ``spark-submit`` its ``--master`` wins over ``master``. In local
        mode the executors run this Python interpreter unless ``PYSPARK_PYTHON`` names another.
    """
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    # Our own progress line replaces Spark's console bar, which would garble it.
    settings = {"spark.ui.showConsoleProgress": "false", **(conf or {})}
    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    submitted = SparkConf().get("spark.master", None)
    if submitted:
        if submitted != master:
            logger.info("using spark-submit's master %s (not %s)", submitted, master)
    else:
        builder = builder.master(master)
    if not (submitted or master).startswith("local") or os.environ.get("PYSPARK_PYTHON"):
        return builder.getOrCreate()
    # PySpark starts Python workers with PYSPARK_PYTHON (read once, when the context starts),
    # else with the first python3 on PATH, which may lack TensorFlow: use this interpreter.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    try:
        return builder.getOrCreate()
    finally:
        del os.environ["PYSPARK_PYTHON"]


def plan_splits(
    files: int,
    total_bytes: int,
    parallelism: int,
    images_per_task: int = DEFAULT_IMAGES_PER_TASK,
    file_open_cost: int | None = None,
) -> dict[str, str]:
    """Spark settings that cut the input into balanced tasks of about ``images_per_task``.

    The number of tasks is a multiple of ``parallelism`` (so the last wave keeps every core
    busy) and at least ``parallelism``.

    Args:
        files: image files listed.
        total_bytes: their total size, in bytes.
        parallelism: cores of the application (``SparkContext.defaultParallelism``).
        images_per_task: images one task should score, about.
        file_open_cost: cost Spark adds per file when packing, in bytes; None:
            :data:`FILE_COST_IN_AVERAGE_FILES` average files, at least
            :data:`DEFAULT_FILE_OPEN_COST`.

    Returns:
        Setting name to value (``spark.sql.files.*``).

    Raises:
        ValueError: for ``parallelism`` or ``images_per_task`` below 1.
    """
    if parallelism < 1 or images_per_task < 1:
        raise ValueError(
            f"parallelism={parallelism} and images_per_task={images_per_task} must be above 0"
        )
    if file_open_cost is None:
        average = total_bytes // max(1, files)
        file_open_cost = max(DEFAULT_FILE_OPEN_COST, FILE_COST_IN_AVERAGE_FILES * average)
    waves = max(1, math.ceil(files / (images_per_task * parallelism)))
    weight = total_bytes + files * file_open_cost  # what Spark packs
    split = max(1, math.ceil(weight / (waves * parallelism) * _SPLIT_SLACK))
    return {
        "spark.sql.files.maxPartitionBytes": str(split),
        "spark.sql.files.openCostInBytes": str(file_open_cost),
        # 1: Spark's own cap (total bytes / this) must not undercut the split above.
        "spark.sql.files.minPartitionNum": "1",
    }


def describe_listing(images: DataFrame) -> tuple[int, int]:
    """Files and bytes the listing behind :func:`read_images`'s DataFrame found.

    Both come from the driver's file index (no file is opened); empty files count too.

    Returns:
        The number of files and their total size in bytes.
    """
    plan = images._jdf.queryExecution().analyzed()
    total_bytes = int(plan.collectLeaves().head().stats().sizeInBytes())
    return len(images._jdf.inputFiles()), total_bytes


@contextmanager
def spark_settings(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set runtime SQL settings of ``spark`` for the block, then put the old values back."""
    previous: dict[str, str | None] = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


# -- images -> predictions -----------------------------------------------------------------


def build_extension_glob(extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> str:
    """A Hadoop glob matching file names with any of ``extensions`` in any case.

    Args:
        extensions: extensions without the dot, e.g. ``("jpg", "png")``.

    Returns:
        A glob such as ``*.{[jJ][pP][gG],[pP][nN][gG]}`` for Spark's ``pathGlobFilter``.
    """
    alternatives = [
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in extension)
        for extension in extensions
    ]
    return "*.{" + ",".join(alternatives) + "}"


def read_images(spark: SparkSession, source: str) -> DataFrame:
    """List and read the image files under ``source``: one row of ``path`` and ``content`` each.

    Files of other extensions, and files and folders whose names start with ``.`` or ``_``
    (hidden to Hadoop), are not read. Spark's scan also skips empty files; see
    :func:`find_unread_files`.

    Args:
        spark: the session.
        source: a folder (searched recursively) or a glob, local or any Hadoop-compatible URI
            (``hdfs://``, ``s3a://``, ``gs://``, ``abfss://``...).

    Returns:
        ``path`` (the file's URI) and ``content`` (its bytes) per image file.

    Raises:
        FileNotFoundError: when ``source`` matches nothing.
    """
    from pyspark.errors import AnalysisException

    reader = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", build_extension_glob())
    )
    try:
        frame = reader.load(source)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc).lower():
            raise FileNotFoundError(
                f"input {source!r} does not exist; pass a folder of images or a glob "
                "such as /data/fundus/2025-*"
            ) from None
        raise
    return frame.select("path", "content")


def build_scoring_udf(
    spark: SparkSession, model_uri: str, env_manager: str = "local", *, threads: int = 1
) -> Any:
    """The pyfunc as a Spark pandas UDF returning a struct of the REST API's columns.

    Args:
        spark: the session.
        model_uri: any MLflow model URI (``models:/eye-disease-model/Production``,
            ``runs:/<id>/model``, a folder).
        env_manager: ``local`` (the executors' Python has eye-model's dependencies) or
            ``virtualenv``/``uv``/``conda`` (MLflow rebuilds the model's environment and runs a
            scoring server per executor task).
        threads: threads TensorFlow and the image decoder may use in each task (Spark runs
            one task per core, so more threads than a task's cores only compete).

    Returns:
        The UDF; call it on a struct with one field ``image``.

    Raises:
        ValueError: for an unknown ``env_manager``.
    """
    import mlflow

    if env_manager not in ENV_MANAGERS:
        raise ValueError(f"env_manager={env_manager!r}: use one of {', '.join(ENV_MANAGERS)}")
    if threads < 1:
        raise ValueError(f"threads={threads} must be above 0")
    environment = {**UDF_ENVIRONMENT, **thread_environment(threads)}
    return mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=RESULT_TYPE, env_manager=env_manager, extra_env=environment
    )


def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables that hold the network and the decoder to ``threads`` each.

    They act when TensorFlow starts in a Python worker, i.e. in its first task.
    """
    value = str(threads)
    return {
        "TF_NUM_INTRAOP_THREADS": value,
        "TF_NUM_INTEROP_THREADS": value,
        "OMP_NUM_THREADS": value,
        **settings_environ(decode_threads=value, network_threads=value),
    }


def score_images(images: DataFrame, udf: Any, *, env_manager: str = "local") -> DataFrame:
    """Apply the scoring UDF to ``images`` and flatten its struct into the output columns.

    Args:
        images: ``path`` and ``content`` columns, as :func:`read_images` returns.
        udf: the UDF of :func:`build_scoring_udf`.
        env_manager: the UDF's environment manager; any but ``local`` sends rows to a
            scoring server as JSON, so the bytes then travel base64-encoded.

    Returns:
        A DataFrame with :data:`BATCH_OUTPUT_COLUMNS`.
    """
    from pyspark.sql import functions as F

    content = F.col("content") if env_manager == "local" else F.base64(F.col("content"))
    scored = images.select("path", udf(F.struct(content.alias(IMAGE_COLUMN))).alias("prediction"))
    columns = []
    for column in OUTPUT_COLUMNS:
        value = F.col(f"prediction.{column}")
        if column in TEXT_COLUMNS:
            # spark_udf casts a string column holding both None and text with astype(str), so
            # a null arrives as the text "None" (no class name or message is ever that text).
            value = F.nullif(value, F.lit("None"))
        columns.append(value.alias(column))
    return scored.select("path", *columns)


def find_unread_files(spark: SparkSession, images: DataFrame, read: DataFrame) -> DataFrame:
    """Files that ``images`` listed but that were not read (Spark's scan skips empty files).

    Args:
        spark: the session.
        images: the DataFrame of :func:`read_images`; its listing is reused, not redone.
        read: a DataFrame with the ``path`` of every file that was read.

    Returns:
        One ``path`` per unread file, written the way the ``binaryFile`` source writes paths.
    """
    from pyspark.sql import Column
    from pyspark.sql import functions as F

    # The listing (URI strings) stays in the JVM: paths never cross into Python. It travels
    # to the one task as an array literal (about 100 MB per million files), which is why
    # this runs only when some listed file was not read.
    listing = images._jdf.inputFiles()
    listed = Column(_jvm(spark.sparkContext).org.apache.spark.sql.functions.lit(listing))
    uris = spark.range(1).select(F.explode(listed).alias("uri"))
    # A listed URI is percent-encoded ('+' is literal) and spells "file:///"; the source
    # writes the decoded path and "file:/".
    decoded = F.url_decode(F.replace(F.col("uri"), F.lit("+"), F.lit("%2B")))
    path = F.regexp_replace(decoded, r"^([A-Za-z][A-Za-z0-9+.\-]*):///", "$1:/")
    return uris.select(path.alias("path")).join(read.select("path"), "path", "left_anti")


# -- the job -------------------------------------------------------------------------------


class ProgressReporter:
    """Writes ``completed/total`` tasks of one Spark job group to a stream, from a thread.

    It reads ``SparkContext.statusTracker()``, the driver's bookkeeping: no paths, no data.
    """

    def __init__(
        self,
        spark: SparkSession,
        job_group: str,
        *,
        interval: float = DEFAULT_PROGRESS_INTERVAL,
        stream: TextIO | None = None,
    ) -> None:
        self._tracker = spark.sparkContext.statusTracker()
        self._job_group = job_group
        self._interval = interval
        self._stream = stream if stream is not None else sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eye-model-progress", daemon=True)
        self._start = time.perf_counter()
        self._last: tuple[int, int] | None = None

    def tasks(self) -> tuple[int, int]:
        """Completed and total tasks of the group's jobs so far."""
        done = total = 0
        for job_id in self._tracker.getJobIdsForGroup(self._job_group):
            job = self._tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job is not None else ():
                stage = self._tracker.getStageInfo(stage_id)
                if stage is not None:
                    done += stage.numCompletedTasks
                    total += stage.numTasks
        return done, total

    def report(self) -> None:
        """Write one progress line, when the figures changed since the last one."""
        done, total = self.tasks()
        if total == 0 or (done, total) == self._last:
            return
        self._last = (done, total)
        elapsed = time.perf_counter() - self._start
        self._stream.write(
            f"batch-score: {done}/{total} tasks done ({100.0 * done / total:.0f}%) "
            f"after {elapsed:.0f} s\n"
        )
        self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.report()
            except Exception:  # progress is a courtesy; it must never fail the job
                logger.debug("progress poll failed", exc_info=True)

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1.0)
        if exc_info[0] is None:
            self.report()


@contextmanager
def _job_group(spark: SparkSession, description: str) -> Iterator[str]:
    """Run the block's Spark jobs in a fresh job group (so progress counts only them)."""
    context = spark.sparkContext
    keys = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
    previous = {key: context.getLocalProperty(key) for key in keys}
    group = f"eye-model-batch-score-{uuid.uuid4().hex[:12]}"
    context.setJobGroup(group, description)
    try:
        yield group
    finally:
        for key, value in previous.items():
            context.setLocalProperty(key, value)  # type: ignore[arg-type]  # None unsets it


def _jvm(context: Any) -> Any:
    """The JVM gateway of a running SparkContext."""
    jvm = context._jvm
    if jvm is None:
        raise RuntimeError("the Spark context has no JVM: it was stopped")
    return jvm


def _check_output(spark: SparkSession, output: str, overwrite: bool) -> None:
    """Fail before any work when ``output`` exists and may not be replaced."""
    if overwrite:
        return
    context = spark.sparkContext
    path = _jvm(context).org.apache.hadoop.fs.Path(output)
    if path.getFileSystem(context._jsc.hadoopConfiguration()).exists(path):
        raise FileExistsError(
            f"output {output!r} already exists; choose another path, or pass --overwrite "
            "(overwrite=True) to replace it"
        )


def score_with_spark(
    input: str,
    output: str,
    model_uri: str,
    master: str = "local[*]",
    *,
    env_manager: str = "local",
    spark: SparkSession | None = None,
    overwrite: bool = False,
    records_per_batch: int = DEFAULT_RECORDS_PER_BATCH,
    images_per_task: int = DEFAULT_IMAGES_PER_TASK,
    threads_per_task: int | None = None,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
) -> dict[str, Any]:
    """Score every image under ``input`` with the pyfunc on Spark; write Parquet to ``output``.

    Args:
        input: a folder (searched recursively) or a glob, local or any Hadoop-compatible URI;
            files with extensions other than :data:`IMAGE_EXTENSIONS` (any case) are skipped.
        output: the Parquet folder to write (local path or Hadoop-compatible URI).
        model_uri: the MLflow model URI, e.g. ``models:/eye-disease-model/Production``.
        master: Spark master URL, used when this function creates the session and
            ``spark-submit`` did not set one.
        env_manager: ``local`` when the executors have eye-model's dependencies installed;
            ``virtualenv`` (or ``uv``, ``conda``) to have MLflow rebuild the model's environment.
        spark: a session to use (left running); None: create one on ``master``, stop it after.
        overwrite: replace ``output`` when it exists (otherwise that is an error).
        records_per_batch: images per Arrow batch, i.e. per ``predict`` call.
        images_per_task: images per Spark task, about (each task loads the model once).
        threads_per_task: threads TensorFlow and the decoder use in each task; None:
            ``spark.task.cpus`` (1 unless set), since Spark runs one task per core.
        progress_interval: seconds between progress lines on stderr; 0 turns them off.

    Returns:
        A summary: ``rows`` (files scored), ``errors`` (rows with an error), ``seconds`` (wall
        time from listing to written output), ``images_per_second``, ``tasks`` (scoring tasks)
        and ``output``.

    Raises:
        FileNotFoundError: when ``input`` matches nothing.
        FileExistsError: when ``output`` exists and ``overwrite`` is False.
        ValueError: for an unknown ``env_manager`` or a size below 1.
    """
    from pyspark.sql import functions as F

    if records_per_batch < 1:
        raise ValueError(f"records_per_batch={records_per_batch} must be above 0")
    own_session = spark is None
    session = spark if spark is not None else get_or_create_session(master)
    threads = threads_per_task or int(session.sparkContext.getConf().get("spark.task.cpus", "1"))
    batch_settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(records_per_batch)}
    try:
        with spark_settings(session, batch_settings):
            _check_output(session, output, overwrite)
            start = time.perf_counter()
            images = read_images(session, input)
            files, total_bytes = describe_listing(images)
            parallelism = session.sparkContext.defaultParallelism
            with spark_settings(
                session, plan_splits(files, total_bytes, parallelism, images_per_task)
            ):
                tasks = images.rdd.getNumPartitions()
                udf = build_scoring_udf(session, model_uri, env_manager, threads=threads)
                scored = score_images(images, udf, env_manager=env_manager)
                mode = "overwrite" if overwrite else "errorifexists"
                rows, errors = _write_scores(scored, output, mode, tasks, progress_interval)
                if files > rows:
                    # Spark's scan skips empty files: give them their (error) rows.
                    unread = find_unread_files(session, images, session.read.parquet(output))
                    empty = unread.coalesce(1).select(
                        "path", F.lit(b"").cast("binary").alias("content")
                    )
                    more_rows, more_errors = _write_scores(
                        score_images(empty, udf, env_manager=env_manager), output, "append"
                    )
                    rows, errors = rows + more_rows, errors + more_errors
            seconds = time.perf_counter() - start
    finally:
        if own_session:
            session.stop()
    if rows == 0:
        logger.warning("no image files (%s) under %s", ", ".join(IMAGE_EXTENSIONS), input)
    logger.info("scored %d images (%d errors) in %.1f s into %s", rows, errors, seconds, output)
    return {
        "rows": rows,
        "errors": errors,
        "seconds": round(seconds, 3),
        "images_per_second": round(rows / max(seconds, 1e-9), 2),
        "tasks": tasks,
        "output": output,
    }


def _write_scores(
    scored: DataFrame,
    output: str,
    mode: str,
    tasks: int = 0,
    progress_interval: float = 0.0,
) -> tuple[int, int]:
    """Run a scoring job that writes Parquet; count its rows and errors as it goes.

    Args:
        scored: the DataFrame of :func:`score_images`.
        output: the Parquet folder.
        mode: Spark's save mode (``errorifexists``, ``overwrite``, ``append``).
        tasks: the job's tasks, for its description.
        progress_interval: seconds between progress lines on stderr; 0: none.

    Returns:
        Rows written and rows with an error (counted by the job itself, with no second pass).
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    spark = scored.sparkSession
    observation = Observation(f"eye-model-batch-score-{uuid.uuid4().hex[:12]}")
    observed = scored.observe(
        observation, F.count(F.lit(1)).alias("rows"), F.count("error").alias("errors")
    )
    writer = observed.write.mode(mode)
    with _job_group(spark, f"eye-model batch-score ({tasks} tasks)") as group:
        if progress_interval <= 0:
            writer.parquet(output)
        else:
            with ProgressReporter(spark, group, interval=progress_interval):
                writer.parquet(output)
    metrics = observation.get
    return int(metrics["rows"]), int(metrics["errors"])
