"""Validate the drift monitor: planted drifts found at n = 500, no false alarms on resamples.

Runs ``eye_model.drift.validation.run_validation`` on a model folder or URI and prints the
detection rate of each planted drift (by the family expected) and the false-alarm rate of
no-drift windows at each size. Goals (issue 6): detection >= 90 % of trials, false alarms
<= 2 % of trials.

    python scripts/validate_drift.py --model runs:/<run_id>/model [--trials 20] [--strict]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or MLflow model URI")
    parser.add_argument("--image-size", type=int, default=256, help="generated image side (px)")
    parser.add_argument("--reference-per-class", type=int, default=250)
    parser.add_argument("--pool-per-class", type=int, default=1300)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--no-drift-sizes", default="200,1000,5000")
    parser.add_argument("--no-drift-trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()

    from eye_model.drift.validation import run_validation

    model = args.model
    if "://" in model or model.startswith(("models:", "runs:")):
        import mlflow

        model = mlflow.artifacts.download_artifacts(model)
    start = time.perf_counter()
    result = run_validation(
        model,
        image_size=args.image_size,
        reference_per_class=args.reference_per_class,
        pool_per_class=args.pool_per_class,
        window=args.window,
        trials=args.trials,
        no_drift_sizes=tuple(int(v) for v in args.no_drift_sizes.split(",")),
        no_drift_trials=args.no_drift_trials,
        seed=args.seed,
    )
    print(f"planted drift, window n={result.window}, {result.trials} trials each (goal >= 90 %):")
    for name, rate in result.detection.items():
        print(f"  {name:24s} {rate:6.1%}  (any family: {result.detection_any_family[name]:.1%})")
    print(f"no drift, {args.no_drift_trials} trials each (goal <= 2 %):")
    for size, rate in result.false_alarms.items():
        print(f"  n={size:<6d} false alarms {rate:6.1%}")
    print(f"seconds: {time.perf_counter() - start:.0f}")
    print(json.dumps(result.__dict__, default=str))
    ok = result.passed()
    print("PASS" if ok else "FAIL")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
