"""Benchmark what shadow scoring adds to a request: p50 of ``predict`` with and without it.

The served model is the eye-model pyfunc (an untrained small CNN at 224 px) loaded as the
scoring server loads it, in serving mode; the shadow is a second registered version of it
(a SQLite store in a temporary folder). Each round sends one one-image request without the
shadow, then one with it, interleaved so that a load change hits both alike; a client pause
(``--pause``, ms) between requests lets the shadow's thread work between them, as it would
between real clients' requests. Printed: p50 of each, their difference in ms (the goal:
at most 1 ms), their ratio, and how many images the shadow scored and dropped.

Usage::

    python scripts/benchmark_shadow.py              # 200 requests per side, 20 ms pause
    python scripts/benchmark_shadow.py --rounds 50 --pause 0
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: Requests in a row on one side before switching.
BLOCK = 20


def _image(seed: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--pause", type=float, default=20.0, help="client pause, ms")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.basicConfig(level=logging.WARNING)  # no per-request log line
    import mlflow
    import pandas as pd

    from eye_model.network import build_network
    from eye_model.pyfunc import ModelConfig, log_model
    from eye_model.registry import register_model
    from eye_model.settings import Settings
    from eye_model.shadow import ShadowScorer

    with tempfile.TemporaryDirectory(prefix="eye-model-shadow-bench-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        os.chdir(tmp)
        network = build_network("small_cnn", 224)
        for temperature in (1.0, 2.0):
            with mlflow.start_run() as run:
                log_model(network, ModelConfig(image_size=224, temperature=temperature))
            register_model(f"runs:/{run.info.run_id}/model", "bench")
        served = mlflow.pyfunc.load_model("models:/bench/1").unwrap_python_model()
        served._serving = True  # answer as in the scoring server (records, not a frame)
        scorer = ShadowScorer(
            "models:/bench/2",
            settings=Settings(tracking_uri=uri, telemetry_dir_override=Path(tmp) / "t"),
            log_dir=Path(tmp) / "shadow",
        )
        if not scorer.wait_loaded(300):
            print(f"the shadow did not load: {scorer.failed}", file=sys.stderr)
            return 1
        frames = [pd.DataFrame({"image": [_image(seed)]}) for seed in range(16)]
        times: dict[str, list[float]] = {"without": [], "with": []}
        # Blocks of BLOCK requests per side, alternating: the shadow's work after a "with"
        # request can only spill into the first request of a "without" block.
        for block in range(-1, args.rounds // BLOCK):
            for side in ("without", "with"):
                served._shadow = scorer if side == "with" else None
                for i in range(BLOCK):
                    start = time.perf_counter()
                    served.predict(None, frames[i % len(frames)])
                    elapsed = (time.perf_counter() - start) * 1000.0
                    if block >= 0:  # the first block of each side is a warm-up
                        times[side].append(elapsed)
                    time.sleep(args.pause / 1000.0)
        scorer.close(30)
        p50 = {side: statistics.median(values) for side, values in times.items()}
        print(
            json.dumps(
                {
                    "rounds": args.rounds,
                    "pause_ms": args.pause,
                    "p50_without_ms": round(p50["without"], 3),
                    "p50_with_ms": round(p50["with"], 3),
                    "p50_added_ms": round(p50["with"] - p50["without"], 3),
                    "ratio": round(p50["with"] / p50["without"], 3),
                    "goal_met": p50["with"] - p50["without"] <= 1.0,
                    "shadow_scored": scorer.aggregates.scored,
                    "shadow_dropped": scorer.aggregates.dropped,
                    "load_average": os.getloadavg()[0],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
