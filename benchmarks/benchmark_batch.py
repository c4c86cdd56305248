"""Benchmark of Spark batch scoring: ``local[2]`` throughput against the pyfunc in one process.

Both sides score the same generated fundus JPEGs (800 at 512 px by default) with the same
model (an untrained ``small_cnn`` at 224 px saved by :func:`eye_model.pyfunc.save_model`):

- in-process: ``mlflow.pyfunc.load_model(...).predict`` on a DataFrame of every file's
  bytes (the files are read inside the timed region); the model is loaded beforehand;
- Spark: :func:`eye_model.batch.score_with_spark` on a ``local[2]`` session, from the
  listing to the Parquet output, with what every job pays (in local mode ``spark_udf``
  loads the model in each task); two untimed jobs first start the Python workers (the
  TensorFlow import) and warm the JVM.

Goal: Spark >= 0.8 x the in-process throughput. Both use the machine's two cores (the
pyfunc decodes in a thread pool while TensorFlow runs multi-threaded), so the goal measures
what Spark costs on top of the model, not parallel speed-up. Two more figures explain the
ratio: the time of a Spark job on 2 images (the fixed cost of a job), and the CPU seconds
per image of each side (this process and its children: Spark's JVM and Python workers),
which other processes on a shared machine disturb less than wall time.
``--copies N`` scores N hard-linked copies of the images, to show how the fixed cost of a
job fades with its size.

Why ratios and rounds: on a shared machine absolute times are noise, so the two sides are
measured alternately, round by round, and the medians compared. The load average and the
cores other processes used during the rounds are printed with the result.

Usage (from the repository root, after ``pip install -e '.[dev]'``)::

    python benchmarks/benchmark_batch.py                 # about 4 minutes (first run: +2)
    python benchmarks/benchmark_batch.py --strict        # exit 1 below the goal
    python benchmarks/benchmark_batch.py --copies 4      # 3,200 images
    python benchmarks/benchmark_batch.py --images 600 --image-size 384 --rounds 2
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

# The machine-load helpers live with the prediction benchmark; share them, not a copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmark_predict import load_text, machine_cpu

MODEL_IMAGE_SIZE = 224


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its live descendants.

    Spark's JVM and its Python workers are descendants of this process, so this is
    "our" CPU; the machine's busy time minus it is what other processes used.
    """
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    tree = {root}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(children)
        tree |= children
    return sum(times.get(pid, 0.0) for pid in tree)


def prepare_images(folder: Path, count: int, image_size: int) -> list[Path]:
    """Generate ``count`` synthetic fundus JPEGs (reused when already there)."""
    from eye_model.synthetic import generate_dataset

    per_class = max(1, count // 4)
    files = sorted(folder.glob("*/*.jpg"))
    marker = folder / f".generated-{per_class}-{image_size}"
    if not marker.exists() or len(files) != 4 * per_class:
        start = time.perf_counter()
        generate_dataset(folder, per_class, image_size=image_size, seed=0, progress=False)
        marker.touch()
        files = sorted(folder.glob("*/*.jpg"))
        seconds = time.perf_counter() - start
        print(f"generated {len(files)} JPEGs at {image_size} px in {seconds:.0f} s")
    return files


def link_copies(files: list[Path], folder: Path, copies: int) -> list[Path]:
    """``copies`` hard-linked copies of ``files`` under ``folder`` (more input, no generation)."""
    linked = []
    for copy in range(copies):
        for path in files:
            target = folder / f"copy-{copy}" / path.parent.name / path.name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
            linked.append(target)
    return linked


def prepare_model(folder: Path) -> Path:
    """Save an untrained small CNN at 224 px as an eye-model pyfunc, anew on every run.

    Never reused: the model carries a copy of the ``eye_model`` code, which Spark's Python
    workers import, so a model saved by an older checkout would measure older code.
    """
    import shutil

    import keras

    from eye_model.network import build_network
    from eye_model.pyfunc import ModelConfig, save_model

    keras.utils.set_random_seed(0)
    network = build_network("small_cnn", MODEL_IMAGE_SIZE)
    shutil.rmtree(folder, ignore_errors=True)
    return save_model(folder, network, ModelConfig(image_size=MODEL_IMAGE_SIZE))


def time_in_process(model: object, files: list[Path]) -> tuple[float, pd.DataFrame]:
    """Seconds for one ``predict`` over every file (reading them included), and the output."""
    start = time.perf_counter()
    frame = pd.DataFrame({"image": [path.read_bytes() for path in files]})
    output = model.predict(frame)  # type: ignore[attr-defined]
    return time.perf_counter() - start, output


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="images to score")
    parser.add_argument("--image-size", type=int, default=512, help="side of the JPEGs (px)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each side")
    parser.add_argument("--copies", type=int, default=1, help="score N hard-linked copies")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    parser.add_argument("--records-per-batch", type=int, default=None, help="Arrow batch rows")
    parser.add_argument("--threads-per-task", type=int, default=None, help="TF/decode threads")
    parser.add_argument("--jvm-options", default="", help="extra JVM options of the driver")
    parser.add_argument("--workdir", type=Path, default=None, help="keep images/model here")
    parser.add_argument("--goal", type=float, default=0.8, help="minimum Spark / in-process")
    parser.add_argument("--strict", action="store_true", help="exit 1 below the goal")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; with ``--strict``, return 1 when Spark is below the goal."""
    args = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    import mlflow

    from eye_model.batch import DEFAULT_RECORDS_PER_BATCH, get_or_create_session, score_with_spark

    workdir = args.workdir or Path(tempfile.gettempdir()) / "eye-model-benchmark-batch"
    workdir.mkdir(parents=True, exist_ok=True)
    # Scoring must not need a tracking server, and must log nothing to one.
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    print(f"== setup  [{load_text()}]")
    files = prepare_images(workdir / f"images-{args.image_size}", args.images, args.image_size)
    if args.copies > 1:
        files = link_copies(files, workdir / f"copies-{args.image_size}-{args.copies}", args.copies)
    model_path = prepare_model(workdir / "model-224")
    data_mb = sum(path.stat().st_size for path in files) / 2**20
    print(f"{len(files)} JPEGs ({data_mb:.1f} MiB), model {model_path}")

    model = mlflow.pyfunc.load_model(str(model_path))
    time_in_process(model, files[:64])  # trace and warm up
    conf = {
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.local.dir": str(workdir / "spark-local"),
    }
    if args.jvm_options:
        conf["spark.driver.extraJavaOptions"] = args.jvm_options
    spark = get_or_create_session(args.master, conf=conf)
    spark.sparkContext.setLogLevel("ERROR")
    batch = args.records_per_batch or DEFAULT_RECORDS_PER_BATCH
    output = str(workdir / "scores.parquet")
    two_images = workdir / "two-images"
    two_images.mkdir(exist_ok=True)
    for path in files[:2]:
        (two_images / path.name).write_bytes(path.read_bytes())
    source = files[0].parent.parent if args.copies == 1 else files[0].parent.parent.parent

    def run_spark(source: Path) -> dict[str, object]:
        return score_with_spark(
            str(source),
            output,
            str(model_path),
            spark=spark,
            overwrite=True,
            records_per_batch=batch,
            threads_per_task=args.threads_per_task,
            progress_interval=0,
        )

    # The first jobs start the Python workers (TensorFlow import) and warm the JVM's JIT.
    for _ in range(2):
        start = time.perf_counter()
        warm = run_spark(source)
        print(f"Spark warm-up job: {time.perf_counter() - start:.1f} s ({warm['tasks']} tasks)")

    in_process: list[float] = []
    on_spark: list[float] = []
    fixed: list[float] = []
    jiffies_before, ours_before = machine_cpu(), tree_cpu_seconds(os.getpid())
    wall_start = time.perf_counter()
    print(f"== timed rounds  [{load_text()}]")
    cpu_in: list[float] = []
    cpu_spark: list[float] = []
    for round_index in range(args.rounds):
        cpu = tree_cpu_seconds(os.getpid())
        seconds, scored = time_in_process(model, files)
        cpu_in.append(tree_cpu_seconds(os.getpid()) - cpu)
        in_process.append(len(files) / seconds)
        cpu = tree_cpu_seconds(os.getpid())
        summary = run_spark(source)
        cpu_spark.append(tree_cpu_seconds(os.getpid()) - cpu)
        if summary["rows"] != len(files) or summary["errors"] != scored["error"].notna().sum():
            print(f"MISMATCH: Spark scored {summary}, in-process {len(scored)} rows")
            spark.stop()
            return 1
        on_spark.append(len(files) / float(summary["seconds"]))  # type: ignore[arg-type]
        fixed.append(float(run_spark(two_images)["seconds"]))  # type: ignore[arg-type]
        print(
            f"  round {round_index + 1}: in-process {in_process[-1]:6.1f} img/s, "
            f"Spark {on_spark[-1]:6.1f} img/s ({summary['tasks']} tasks), "
            f"2-image job {fixed[-1]:.2f} s; CPU {cpu_in[-1]:.1f} s vs {cpu_spark[-1]:.1f} s  "
            f"[{load_text()}]"
        )
    wall = time.perf_counter() - wall_start
    jiffies_after, ours_after = machine_cpu(), tree_cpu_seconds(os.getpid())
    spark.stop()

    single, distributed = statistics.median(in_process), statistics.median(on_spark)
    ratio = distributed / single
    print(f"\nin-process pyfunc : {single:7.1f} images/s (median of {args.rounds})")
    print(f"Spark {args.master:<11} : {distributed:7.1f} images/s (median of {args.rounds})")
    print(f"ratio             : {ratio:.2f} x (goal >= {args.goal:.2f} x)")
    overhead = statistics.median(fixed)
    print(
        f"fixed cost of a Spark job (2 images: listing, one model load per task, Parquet "
        f"commit): {overhead:.2f} s; without it Spark would score "
        f"{len(files) / max(len(files) / distributed - overhead, 1e-9):.1f} images/s"
    )
    per_image_in = 1000 * statistics.median(cpu_in) / len(files)
    per_image_spark = 1000 * statistics.median(cpu_spark) / len(files)
    print(
        f"CPU per image (this process tree, all threads): in-process {per_image_in:.1f} ms, "
        f"Spark {per_image_spark:.1f} ms (JVM and Python workers); "
        f"ratio {per_image_in / per_image_spark:.2f} x"
    )
    if jiffies_before and jiffies_after and jiffies_after[0] > jiffies_before[0]:
        cores = os.cpu_count() or 1
        total, idle = (a - b for a, b in zip(jiffies_after, jiffies_before, strict=True))
        busy = (1.0 - idle / total) * cores
        ours = (ours_after - ours_before) / wall
        print(
            f"CPU during the rounds: machine {busy:.2f} of {cores} cores busy, this benchmark "
            f"(with Spark) {ours:.2f}, other processes {max(0.0, busy - ours):.2f}"
        )
    if ratio < args.goal:
        print(f"BELOW GOAL: {ratio:.2f} x < {args.goal:.2f} x")
        return 1 if args.strict else 0
    print("goal met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
