"""Benchmark the cost of HiResCAM explanations against plain prediction, in one run.

Saves an untrained ``small_cnn`` (the default recipe's network, the cost does not depend on
the weights) as an eye-model pyfunc at ``--image-size`` (default 224), loads it, and times
``model.predict`` on the same base64 JPEGs of generated fundus photographs, without params
and with ``{"explain": true}``, at a batch of ``--batch`` images and at one image (the usual
REST request). Rounds are interleaved (plain, explained, plain ...) so a change in the
machine's load hits both sides alike; medians are compared.

Goal: explained / plain time per image <= 3.0.

Usage::

    python scripts/benchmark_explain.py            # about a minute
    python scripts/benchmark_explain.py --rounds 5 --strict
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

GOAL_MAX_RATIO = 3.0


def _images(n: int, side: int) -> list[str]:
    from eye_model.synthetic import draw_fundus, make_image_rng, sample_fundus_params

    out = []
    for i in range(n):
        label = ("cataract", "diabetic_retinopathy", "glaucoma", "normal")[i % 4]
        image = draw_fundus(sample_fundus_params(label, make_image_rng(3, i % 4, i), side))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def _median_ms(model: object, frame: object, params: dict | None, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(frame, params=params)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--source-side", type=int, default=512, help="side of the JPEGs sent")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--strict", action="store_true", help="exit 1 if the goal is missed")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("ENABLE_MLFLOW_TRACKING", "false")

    import keras
    import mlflow
    import pandas as pd

    from eye_model.network import build_network
    from eye_model.pyfunc import ModelConfig, save_model

    keras.utils.set_random_seed(0)
    network = build_network("small_cnn", args.image_size)
    images = _images(args.batch, args.source_side)
    ok = True
    with tempfile.TemporaryDirectory(prefix="eye-model-bench-") as tmp:
        path = save_model(Path(tmp) / "model", network, ModelConfig(image_size=args.image_size))
        model = mlflow.pyfunc.load_model(str(path))
        explain = {"explain": True}
        cases = {
            f"batch of {args.batch}": pd.DataFrame({"image": images}),
            "one image": pd.DataFrame({"image": images[:1]}),
        }
        for frame in cases.values():  # warm up both paths (the HiResCAM function is traced)
            model.predict(frame, params=explain)
            model.predict(frame)
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"small_cnn at {args.image_size} px, {args.source_side} px JPEGs, medians of rounds")
        for name, frame in cases.items():
            n = len(frame)
            repeats = 3 if n > 1 else 15
            plain, explained = [], []
            for _ in range(args.rounds):
                plain.append(_median_ms(model, frame, None, repeats))
                explained.append(_median_ms(model, frame, explain, repeats))
            p, e = statistics.median(plain) / n, statistics.median(explained) / n
            ratio = e / p
            verdict = "ok" if ratio <= GOAL_MAX_RATIO else "MISSED"
            ok &= ratio <= GOAL_MAX_RATIO
            print(
                f"{name:>12}: plain {p:7.2f} ms/image, explained {e:7.2f} ms/image, "
                f"ratio {ratio:.2f} (goal <= {GOAL_MAX_RATIO:.1f}: {verdict})"
            )
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
