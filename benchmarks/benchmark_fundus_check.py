"""Benchmark the fundus check on a batch of 32 decoded 224 px images, against the raw network.

Both are timed in one run on the same batch, interleaved round by round (this is a shared
machine: absolute times are noise), and the check's share of the network's time is printed,
with the check's CPU time of its thread (what the other work on the machine does not
inflate as much as wall time).

Usage::

    python benchmarks/benchmark_fundus_check.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import numpy as np


def _batch(size: int = 224, n: int = 32) -> np.ndarray:
    from eye_model.preprocess import decode_image
    from eye_model.synthetic import make_image_rng, render_fundus

    images = []
    for i in range(n):
        buffer = io.BytesIO()
        label = ("cataract", "diabetic_retinopathy", "glaucoma", "normal")[i % 4]
        render_fundus(label, make_image_rng(0, i % 4, i), 512).save(buffer, "JPEG", quality=90)
        images.append(decode_image(buffer.getvalue(), size).require_pixels())
    return np.stack(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    import tensorflow as tf

    from eye_model.fundus import check_fundus
    from eye_model.network import build_network

    batch = _batch()
    network = build_network("small_cnn", 224)
    spec = tf.TensorSpec([None, 224, 224, 3], tf.uint8)
    raw = tf.function(lambda images: network(tf.cast(images, tf.float32), training=False), [spec])
    tensor = tf.convert_to_tensor(batch)
    for _ in range(5):
        raw(tensor)
        check_fundus(batch)
    check_ms, check_cpu_ms, network_ms = [], [], []
    for _ in range(args.rounds):
        start, cpu = time.perf_counter(), time.thread_time()
        check_fundus(batch)
        check_ms.append((time.perf_counter() - start) * 1000)
        check_cpu_ms.append((time.thread_time() - cpu) * 1000)
        if len(network_ms) < max(20, args.rounds // 10):
            start = time.perf_counter()
            raw(tensor).numpy()
            network_ms.append((time.perf_counter() - start) * 1000)
    check, network_p50 = statistics.median(check_ms), statistics.median(network_ms)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"fundus check, batch of 32 at 224 px: p50 {check:.3f} ms (min {min(check_ms):.3f} ms, "
        f"CPU p50 {statistics.median(check_cpu_ms):.3f} ms)"
    )
    print(f"raw network, same batch: p50 {network_p50:.1f} ms")
    print(f"check / network: {check / network_p50:.2%}")


if __name__ == "__main__":
    main()
