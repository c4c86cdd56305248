"""Is the default training recipe stable and repeatable? Train it with several seeds.

Each run is ``eye-model train`` in its own process on the default synthetic set (300
images per class at 224 px, generated once with seed 42), logging to a throw-away
SQLite tracking store; only the training seed changes (initialisation, split,
data order, augmentation). Prints every run's test macro-F1 and accuracy, how many
pass the goal (macro-F1 >= 0.97), and with ``--repeat`` the difference between two
runs of the same seed (goal: within 0.01).

``--determinism-cost`` instead times two epochs of the default fit with and without
TensorFlow's op determinism (each in a fresh process, alternating) and prints the ratio.

    python scripts/benchmark_training_stability.py                  # seeds 1-5, ~1 h on 2 cores
    python scripts/benchmark_training_stability.py --repeat --seeds 42
    python scripts/benchmark_training_stability.py --determinism-cost
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_MACRO_F1 = 0.97
REPEAT_TOLERANCE = 0.01


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    env["MLFLOW_EXPERIMENT_NAME"] = "training-stability"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def default_data_dir(per_class: int, image_size: int) -> Path:
    """The default synthetic set (dataset seed 42), generated once into the cache."""
    sys.path.insert(0, str(ROOT))
    from eye_model.data import prepare_synthetic_data
    from eye_model.settings import load_settings

    return prepare_synthetic_data(per_class, image_size, 42, load_settings().cache_dir)


def train_once(home: Path, data_dir: Path, seed: int, args: argparse.Namespace) -> dict:
    """One ``train`` process; returns its run's metrics."""
    command = [
        sys.executable, "-m", "eye_model.cli", "train",
        "--data-dir", str(data_dir), "--image-size", str(args.image_size),
        "--epochs", str(args.epochs), "--seed", str(seed),
        "--synthetic-per-class", str(args.synthetic_per_class),
    ]  # fmt: skip
    # Output goes to files, not pipes: a training must survive this script being stopped,
    # and its per-epoch lines are there to watch (tail -f).
    stem = home / f"train-seed{seed}-{time.monotonic_ns()}"
    out_path, err_path = stem.with_suffix(".out"), stem.with_suffix(".log")
    start = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        subprocess.run(command, env=_env(home), stdout=out, stderr=err, check=True)
    seconds = time.perf_counter() - start
    from mlflow import MlflowClient

    run_id = json.loads(out_path.read_text().strip().splitlines()[-1])["run_id"]
    client = MlflowClient(tracking_uri=_env(home)["MLFLOW_TRACKING_URI"])
    metrics = client.get_run(run_id).data.metrics
    return {
        "seed": seed,
        "test_macro_f1": metrics["test_macro_f1"],
        "test_accuracy": metrics["test_accuracy"],
        "epochs_run": int(metrics["epochs_run"]),
        "seconds": round(seconds, 1),
    }


def stability(args: argparse.Namespace) -> int:
    data_dir = default_data_dir(args.synthetic_per_class, args.image_size)
    with tempfile.TemporaryDirectory(prefix="eye-model-stability-") as tmp:
        home = Path(args.home or tmp)
        home.mkdir(parents=True, exist_ok=True)
        # Parallel runs share the store: create it and the experiment before they start.
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=_env(home)["MLFLOW_TRACKING_URI"]).create_experiment(
            "training-stability", artifact_location=(home / "artifacts").as_uri()
        )
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(train_once, home, data_dir, seed, args) for seed in args.seeds]
            results = []
            for future in futures:
                results.append(future.result())
                print(json.dumps(results[-1]), flush=True)
        passed = sum(r["test_macro_f1"] >= GOAL_MACRO_F1 for r in results)
        f1 = [f"{r['test_macro_f1']:.3f}" for r in results]
        print(f"test macro-F1 per seed: {', '.join(f1)}")
        print(f"{passed} of {len(results)} runs reach macro-F1 >= {GOAL_MACRO_F1}")
        ok = passed == len(results)
        if args.repeat:
            again = train_once(home, data_dir, args.seeds[0], args)
            print(json.dumps(again), flush=True)
            diff = abs(again["test_macro_f1"] - results[0]["test_macro_f1"])
            diff_acc = abs(again["test_accuracy"] - results[0]["test_accuracy"])
            print(
                f"same seed {args.seeds[0]} twice: macro-F1 differs by {diff:.4f}, "
                f"accuracy by {diff_acc:.4f} (goal: within {REPEAT_TOLERANCE})"
            )
            ok = ok and max(diff, diff_acc) <= REPEAT_TOLERANCE
    return 0 if ok else 1


TIMING_CODE = """
import sys, time
from eye_model.data import load_dataset, make_tf_dataset, class_weights
from eye_model.train import TrainConfig
from eye_model.augment import augment_dataset
from eye_model.recipe import build_and_compile, seed_training
data_dir, size, deterministic = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
config = TrainConfig(data_dir=data_dir, image_size=size)
seed_training(config.seed, deterministic=deterministic)
dataset = load_dataset(data_dir, size, seed=config.seed)
train_ds = augment_dataset(
    make_tf_dataset(dataset.train, batch_size=32, training=True, seed=1), seed=1
)
steps = -(-len(dataset.train) // 32)
network = build_and_compile(config, steps)
network.fit(train_ds, epochs=1, verbose=0)  # tracing and warm-up
start = time.perf_counter()
network.fit(train_ds, epochs=2, verbose=0, class_weight=class_weights(dataset.train.labels))
print(time.perf_counter() - start)
"""


def determinism_cost(args: argparse.Namespace) -> int:
    data_dir = default_data_dir(args.synthetic_per_class, args.image_size)
    with tempfile.TemporaryDirectory(prefix="eye-model-determinism-") as tmp:
        env = _env(Path(tmp))
        times: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.rounds):
            for mode, flag in (("on", "1"), ("off", "0")):
                out = subprocess.run(
                    [sys.executable, "-c", TIMING_CODE, str(data_dir), str(args.image_size), flag],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                times[mode].append(float(out.stdout.strip().splitlines()[-1]))
                print(f"op determinism {mode}: {times[mode][-1]:.1f} s for 2 epochs", flush=True)
    best_on, best_off = min(times["on"]), min(times["off"])
    print(
        f"best of {args.rounds}: on {best_on:.1f} s, off {best_off:.1f} s, "
        f"ratio on/off {best_on / best_off:.2f} (machine shared: noisy)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--synthetic-per-class", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=1, help="training processes at a time")
    parser.add_argument("--repeat", action="store_true", help="run the first seed twice")
    parser.add_argument("--determinism-cost", action="store_true")
    parser.add_argument(
        "--home", help="keep the tracking store and the trained models here (default: deleted)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="--determinism-cost rounds")
    args = parser.parse_args()
    return determinism_cost(args) if args.determinism_cost else stability(args)


if __name__ == "__main__":
    sys.exit(main())
