"""Benchmark of the out-of-distribution score: what it adds to a network call.

The same network (``small_cnn`` at 224 px, untrained) is compiled twice by
:class:`eye_model.inference.NetworkRunner`: with out-of-distribution statistics (the
serving graph then also computes ``ood_score``) and without (a model stored before the
score). Both score the same batch of 32 ready uint8 images, alternately, round by round, so
a change of machine load hits both alike; the medians are compared.

Goal: the score costs nearly nothing, so the pyfunc's wrapper goal (>= 0.90 x the raw
network, ``scripts/benchmark_predict.py``, whose model computes the score) still holds.
Printed: ms per batch of 32 with and without, and their ratio.

Usage (from the repository root)::

    python benchmarks/benchmark_ood.py              # about a minute
    python benchmarks/benchmark_ood.py --rounds 60 --size 96
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmark_predict import fit_ood_of, load_text


def score_alone(network: object, batch: np.ndarray, rounds: int) -> float:
    """Median seconds of the score's own operations (compiled) on ready logits and embeddings:
    the difference above, without the network's noise around it."""
    import tensorflow as tf

    from eye_model.network import build_embedding_model
    from eye_model.ood import OodStatistics, score_ood

    stats = OodStatistics.from_dict(fit_ood_of(network, batch.shape[1]))
    assert stats is not None
    logits, embedding = build_embedding_model(network)(batch.astype(np.float32))
    score = tf.function(lambda lg, em: score_ood(lg, em, stats))
    score(logits, embedding).numpy()
    times = []
    for _ in range(rounds * 10):
        start = time.perf_counter()
        score(logits, embedding).numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    """Measure and print; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="Timed calls of each runner.")
    parser.add_argument("--size", type=int, default=224, help="Network input side, px.")
    parser.add_argument("--batch", type=int, default=32, help="Images per call.")
    args = parser.parse_args()

    import keras

    from eye_model.inference import ModelConfig, NetworkRunner, aligned_stack
    from eye_model.network import build_network

    keras.utils.set_random_seed(0)
    network = build_network("small_cnn", args.size)
    with_score = NetworkRunner(network, ModelConfig(args.size, ood=fit_ood_of(network, args.size)))
    without = NetworkRunner(network, ModelConfig(args.size))
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (args.size, args.size, 3), np.uint8) for _ in range(args.batch)]
    batch = aligned_stack(images)
    for runner in (with_score, without) * 3:  # trace, and warm oneDNN's caches
        runner.run(batch)
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(args.rounds):
        for name, runner in (("without", without), ("with", with_score)):
            start = time.perf_counter()
            _, _, ood = runner.run(batch)
            times[name].append(time.perf_counter() - start)
            assert (ood is None) == (name == "without")
    with_ms = 1000 * statistics.median(times["with"])
    without_ms = 1000 * statistics.median(times["without"])
    what = f"batch of {args.batch} at {args.size} px, {args.rounds} rounds"
    print(f"ood_score cost, {what} ({load_text()})")
    print(f"  without the score: {without_ms:8.2f} ms per batch (p50)")
    print(f"  with the score:    {with_ms:8.2f} ms per batch (p50)")
    print(f"  ratio with/without: {with_ms / without_ms:.3f} (+{with_ms - without_ms:.2f} ms)")
    print(
        f"  the score alone:    {1000 * score_alone(network, batch, args.rounds):8.3f} ms per batch"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
