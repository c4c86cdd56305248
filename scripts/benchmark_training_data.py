"""Benchmark of streaming training input: memory against the set's size, speed against memory.

Goals (issue "training on real archives", point 1):

- memory: ``eye-model train`` for one epoch on 8,000 images peaks at most 300 MB above the
  same command on 1,000 images of the same size (peak RSS of each child process, from
  ``wait4``);
- speed: one training epoch on the streamed files (``make_tf_dataset``: the serving decoder
  in a parallel ``tf.data`` map) at >= 0.9 x the images per second of the in-memory path
  (every image decoded up front into one array, then the same batching and augmentation),
  on the same training split (the small set's by default), in child processes of the same
  run, interleaved in pairs; the best pair is judged, every pair is printed.

The synthetic set (8,000 images by default) is generated once into the cache folder
(``EYE_MODEL_CACHE``); the small set is the first images of each class of the large one.
Every ``train`` runs against its own throwaway SQLite tracking store. Exits 1 when a goal
is missed. On a shared machine absolute times are noise: read the ratio.

Usage (from the repository root)::

    python scripts/benchmark_training_data.py
    python scripts/benchmark_training_data.py --image-size 128 --large 4000 --small 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from eye_model.config import CLASS_NAMES


def prepare_sets(large: int, small: int, image_size: int, workdir: Path) -> tuple[Path, Path]:
    """The small synthetic set (generated once into the cache) and the large one from it.

    The generator makes about 3 images/s on a loaded 2-core machine, so the large set is
    made of the small set's images under the 8 symmetries of the square (mirrors and
    quarter turns: every one a plausible fundus photograph), re-encoded as JPEG: distinct
    files (the loader removes exact duplicates) of the same size and decoding cost.
    """
    from PIL import Image

    from eye_model.data import discover_images, prepare_synthetic_data
    from eye_model.settings import load_settings

    little = prepare_synthetic_data(
        small // len(CLASS_NAMES), image_size, 0, load_settings().cache_dir
    )
    big = workdir / "large"
    files = discover_images(little)
    variants = -(-large // len(files))  # 0: no large set
    if variants > 8:
        raise SystemExit(f"--large may be at most 8 x --small ({8 * len(files)})")
    turns = [None, *Image.Transpose]  # identity, then the 7 other symmetries
    written = 0
    for variant in range(variants):
        for path, label in zip(files["path"], files["label"], strict=True):
            if written == large:
                break
            with Image.open(path) as image:
                changed = image if turns[variant] is None else image.transpose(turns[variant])
                target = big / label / f"{Path(path).stem}_{variant}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                changed.save(target, "JPEG", quality=92)
            written += 1
    return big, little


def run_child(command: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run a child to its end; its stdout and its peak resident memory in MB (10^6 bytes)."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"child {command[3:6]} failed with exit code {process.returncode}")
    return text, usage.ru_maxrss * 1024 / 1e6  # ru_maxrss is in KiB on Linux


def train_peak_mb(data_dir: Path, image_size: int, workdir: Path) -> tuple[float, dict]:
    """Peak RSS (MB) of ``eye-model train`` for one epoch, and the run's figures."""
    store = workdir / f"mlflow-{data_dir.name}.db"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
        "MLFLOW_EXPERIMENT_NAME": "benchmark-training-data",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    command = [sys.executable, "-m", "eye_model.cli", "train", "--data-dir", str(data_dir)]
    command += ["--image-size", str(image_size), "--epochs", "1"]
    text, peak = run_child(command, env)
    summary = json.loads(text.strip().splitlines()[-1])
    from mlflow import MlflowClient

    metrics = MlflowClient(f"sqlite:///{store}").get_run(summary["run_id"]).data.metrics
    return peak, metrics


def fit_speed(data_dir: Path, image_size: int, mode: str, batch_size: int) -> float:
    """Images per second of one training epoch (child process side)."""
    import keras
    import tensorflow as tf

    from eye_model.data import (
        batch_images,
        class_weights,
        decode_all,
        load_dataset,
        make_tf_dataset,
    )
    from eye_model.network import build_network

    train = load_dataset(data_dir, image_size, seed=42).train
    if mode == "stream":
        dataset = make_tf_dataset(train, batch_size=batch_size, training=True, seed=42)
    else:  # the in-memory path: decode everything first (not timed), then slice the array
        pixels = decode_all(train)
        slices = tf.data.Dataset.from_tensor_slices((pixels, train.labels))
        slices = slices.shuffle(len(train), seed=42, reshuffle_each_iteration=True)
        dataset = batch_images(slices, batch_size=batch_size)
    keras.utils.set_random_seed(42)
    network = build_network("small_cnn", image_size, "none")
    network.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    network.fit(dataset, epochs=1, class_weight=class_weights(train.labels), verbose=0)
    return len(train) / (time.perf_counter() - start)


def speed_of(data_dir: Path, image_size: int, mode: str, batch_size: int) -> float:
    """Images per second of one epoch of ``mode``, measured in a fresh child process."""
    command = [sys.executable, __file__, "--child", mode, "--data-dir", str(data_dir)]
    command += ["--image-size", str(image_size), "--batch-size", str(batch_size)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    text, _ = run_child(command, env)
    return float(text.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", type=int, default=8000, help="images of the large set")
    parser.add_argument("--small", type=int, default=1000, help="images of the small set")
    parser.add_argument("--image-size", type=int, default=224, help="network input, px")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="speed pairs, interleaved")
    parser.add_argument(
        "--speed-set", choices=["small", "large"], default="small", help="set of the speed pairs"
    )
    parser.add_argument("--only", choices=["memory", "speed"], help="measure only this goal")
    parser.add_argument("--memory-goal-mb", type=float, default=300.0)
    parser.add_argument("--speed-goal", type=float, default=0.9)
    parser.add_argument("--child", choices=["stream", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(fit_speed(args.data_dir, args.image_size, args.child, args.batch_size))
        return 0

    with tempfile.TemporaryDirectory(prefix="benchmark-training-data-") as tmp:
        workdir = Path(tmp)
        needs_large = args.only != "speed" or args.speed_set == "large"
        big, little = prepare_sets(args.large * needs_large, args.small, args.image_size, workdir)
        os.chdir(workdir)  # MLflow's artifacts of the SQLite stores land here
        growth, ratios = 0.0, [args.speed_goal]
        if args.only != "speed":
            peak_small, run_small = train_peak_mb(little, args.image_size, workdir)
            peak_large, run_large = train_peak_mb(big, args.image_size, workdir)
            growth = peak_large - peak_small
            print(
                f"memory: train, 1 epoch, {args.image_size} px: {args.small} images peak "
                f"{peak_small:,.0f} MB, {args.large} images peak {peak_large:,.0f} MB: "
                f"+{growth:,.0f} MB (goal <= +{args.memory_goal_mb:,.0f} MB); train run "
                f"{run_small['train_images_per_second']:.1f} and "
                f"{run_large['train_images_per_second']:.1f} images/s",
                flush=True,
            )
        if args.only != "memory":
            ratios = []
            large_set = args.speed_set == "large"
            speed_set, size = (big, args.large) if large_set else (little, args.small)
            for _ in range(args.repeats):  # interleaved: the machine's load drifts
                memory = speed_of(speed_set, args.image_size, "memory", args.batch_size)
                stream = speed_of(speed_set, args.image_size, "stream", args.batch_size)
                ratios.append(stream / memory)
                print(
                    f"speed: one epoch of the {size}-image set's training split: in memory "
                    f"{memory:.1f} images/s, streamed {stream:.1f} images/s: "
                    f"{stream / memory:.3f} x (goal >= {args.speed_goal})",
                    flush=True,
                )
    ok = growth <= args.memory_goal_mb and max(ratios) >= args.speed_goal
    print("goals met" if ok else "goal missed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
