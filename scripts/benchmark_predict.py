"""Benchmark the eye-model pyfunc against the raw network and the best-known decode.

What it measures, all in one process run and on the same synthetic fundus JPEGs:

1. The raw network: ``build_network("small_cnn", 224)`` (untrained) compiled for the
   runtime the model runs it on (``--runtime``, default TensorFlow Lite as
   ``EYE_MODEL_NETWORK_RUNTIME``; ``tensorflow``: ``tf.function`` with a fixed uint8
   ``[None, 224, 224, 3]`` signature), called on ready inputs, at batch 32 (images/s) and
   batch 1 (p50 ms). The raw batch of 32 on the other runtime is printed for comparison.
   The pyfunc saved from it computes ``ood_score`` too (statistics fitted on its own
   embeddings of noise), as a trained model does.
2. The best-known decode of a 2000 px JPEG with Pillow: ``draft("RGB", (224, 224))``
   (DCT-domain 1/8 scaling), ``convert("RGB")``, resize to 224; and a full decode
   without draft, for reference.
3. Goal A, wrapper overhead: ``model.predict`` on 32 base64 224 px JPEGs (decoding
   them is nearly free) must reach >= 0.90 x the raw network's batch-32 throughput.
4. Goal B, decode: ``eye_model.preprocess.decode_image`` of a 2000 px JPEG must take
   <= 8 ms (p50); its ratio to the draft baseline is printed too.
5. Goal C, end to end: ``model.predict`` on 32 base64 2000 px JPEGs must reach
   >= 0.90 x the two-core limit ``1 / (t_raw + t_decode / 2)`` (t_raw: raw network time
   per image at batch 32; t_decode: best-known decode time per image; the network uses
   both cores, decoding can be split over two threads).
6. Goal D, serving: one 2000 px JPEG POSTed (``dataframe_split`` JSON) to
   ``mlflow models serve --env-manager local`` must answer in <= raw batch-1 time +
   best-known decode + 8 ms (p50). A no-op pyfunc is served too, with the same request
   body, to show MLflow's own scoring-server floor.

Why ratios: this is a shared two-core machine where other processes (tests, builds) come
and go, so absolute times are noise. Each goal is judged against baselines measured in the
same run, and the measurements behind one ratio are interleaved round by round (baseline,
then candidate, then baseline ...) so a load change hits both sides alike. Medians (p50)
are used throughout. The load average is printed with each phase, and how many cores other
processes used meanwhile (from /proc/stat): goals C and D assume two free cores.

Usage::

    python scripts/benchmark_predict.py            # full run (about 2 minutes)
    python scripts/benchmark_predict.py --quick    # CI smoke: fewer repetitions
    python scripts/benchmark_predict.py --skip-serving --strict
    python scripts/benchmark_predict.py --raw-batch-ms 42   # as on a faster CPU

A faster CPU (issue 19: the same network at 42 ms per batch of 32 instead of 80-140 ms)
is stood for with ``--raw-batch-ms 42``: the network is narrowed (``small_cnn``'s
``width``) until its raw batch takes that long here, and every goal is judged with it. The
wrapper's own costs then weigh as they would on that CPU, or more, since a faster CPU also
runs the Python and the decoding faster.

The exit code is 0 unless ``--strict`` is given and a goal fails (or could not be measured).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SIZE = 224
BATCH = 32
BIG_SIDE = 2000
JPEG_QUALITY = 90
#: Sensor-noise sigma (grey levels) added before encoding; it gives a 2000 px q90 JPEG
#: of a rendered fundus about 450-600 KB, like a real fundus camera file.
NOISE_SIGMA = 3.3

# Goals (see the module docstring).
GOAL_A_MIN_RATIO = 0.90
GOAL_B_MAX_MS = 8.0
GOAL_C_MIN_RATIO = 0.90
GOAL_D_SLACK_MS = 8.0


# -- small helpers ------------------------------------------------------------------------------


def p50(values: Sequence[float]) -> float:
    """Median of ``values``."""
    return float(statistics.median(values))


def p90(values: Sequence[float]) -> float:
    """90th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))])


def timed(fn: Callable[[], Any]) -> float:
    """Run ``fn`` once and return its wall time in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fit_ood_of(network: Any, size: int = SIZE) -> dict[str, Any]:
    """Out-of-distribution statistics of a network, fitted on its embeddings of 64 noise
    images: the serving graph then computes ``ood_score`` as a trained model's does."""
    from eye_model.network import build_embedding_model
    from eye_model.ood import fit_ood_statistics

    pixels = np.random.default_rng(0).integers(0, 256, (64, size, size, 3)).astype(np.float32)
    logits, embedding = (np.asarray(x) for x in build_embedding_model(network)(pixels))
    labels = np.arange(32) % logits.shape[1]
    stats = fit_ood_statistics(embedding[:32], labels, logits[32:], embedding[32:], logits.shape[1])
    return stats.to_dict()


def load_text() -> str:
    """The 1, 5 and 15 minute load averages, and the core count."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def machine_cpu() -> tuple[int, int] | None:
    """Total and idle jiffies of the whole machine from /proc/stat (None off Linux)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:8]), fields[3] + fields[4]


@contextlib.contextmanager
def phase(title: str, loads: list[float], others: list[float]) -> Iterator[None]:
    """Print a phase header with the load; on exit, print who used the CPU meanwhile.

    The 1-minute load goes to ``loads``; the cores used by other processes (the machine's
    busy cores minus this process's) go to ``others``.
    """
    loads.append(os.getloadavg()[0])
    print(f"\n== {title}  [{load_text()}]", flush=True)
    before, cpu, wall = machine_cpu(), time.process_time(), time.perf_counter()
    yield
    after = machine_cpu()
    ours = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if before and after and after[0] > before[0]:
        busy = (1.0 - (after[1] - before[1]) / (after[0] - before[0])) * (os.cpu_count() or 1)
        others.append(max(0.0, busy - ours))
        print(
            f"  CPU during this phase: machine {busy:.2f} of {os.cpu_count()} cores busy, "
            f"this process {ours:.2f}, other processes (with any server started here) "
            f"{busy - ours:.2f}"
        )


@dataclass
class GoalResult:
    """One line of the summary table."""

    name: str
    measured: str
    target: str
    ratio: float | None
    passed: bool | None  # None: could not be measured

    @property
    def verdict(self) -> str:
        """PASS, FAIL or ERROR."""
        if self.passed is None:
            return "ERROR"
        return "PASS" if self.passed else "FAIL"


# -- synthetic images ---------------------------------------------------------------------------


def _fallback_fundus(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth orange disc on black with choroidal texture, an optic disc and a darker macula."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2.0
    radius = 0.46 * size
    r = np.hypot(xx - centre, yy - centre) / radius
    field = np.clip((1.0 - r) * size / 12.0, 0.0, 1.0)  # soft edge
    coarse = Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8))
    texture = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    falloff = 1.0 - 0.45 * r**2
    disc = np.exp(
        -(((xx - centre - 0.35 * radius) ** 2 + (yy - centre) ** 2) / (0.09 * radius) ** 2)
    )
    macula = np.exp(
        -(((xx - centre + 0.1 * radius) ** 2 + (yy - centre) ** 2) / (0.2 * radius) ** 2)
    )
    base = np.stack([0.88 * np.ones_like(r), 0.42 * np.ones_like(r), 0.16 * np.ones_like(r)])
    scene = base * (falloff * (0.85 + 0.3 * texture) * (1.0 - 0.35 * macula))
    scene += np.array([0.15, 0.5, 0.45]).reshape(3, 1, 1) * disc
    scene *= field
    pixels = np.clip(scene * 255.0, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(pixels))


def render_bases(count: int, seed: int) -> tuple[list[np.ndarray], str]:
    """Render ``count`` 2000 px fundus images; returns them and the generator's name."""
    rng = np.random.default_rng(seed)
    try:
        from eye_model.config import CLASS_NAMES
        from eye_model.synthetic import render_fundus

        bases = [
            np.asarray(render_fundus(CLASS_NAMES[i % len(CLASS_NAMES)], rng, BIG_SIDE))
            for i in range(count)
        ]
        return bases, "eye_model.synthetic.render_fundus"
    except Exception as exc:  # the generator is being finished by someone else
        print(f"  render_fundus unavailable ({type(exc).__name__}: {exc}); drawing my own")
        bases = [np.asarray(_fallback_fundus(rng, BIG_SIDE)) for _ in range(count)]
        return bases, "built-in fallback drawing"


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an RGB uint8 array as a JPEG file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_jpegs(bases: list[np.ndarray], count: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Make ``count`` distinct 2000 px JPEGs (bases plus shifted sensor noise) and 224 px ones."""
    rng = np.random.default_rng(seed)
    noise = np.round(rng.normal(0.0, NOISE_SIGMA, bases[0].shape)).astype(np.int16)
    big: list[bytes] = []
    small: list[bytes] = []
    for i in range(count):
        base = bases[i % len(bases)]
        shifted = np.roll(noise, shift=(37 * i, 53 * i), axis=(0, 1))
        pixels = np.clip(base.astype(np.int16) + shifted, 0, 255).astype(np.uint8)
        big.append(encode_jpeg(pixels))
        reduced = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        small.append(encode_jpeg(np.asarray(reduced)))
    return big, small


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


# -- decoders -----------------------------------------------------------------------------------


def decode_draft(data: bytes) -> np.ndarray:
    """Best-known decode: DCT-domain downscaling with ``draft``, then resize to 224."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (SIZE, SIZE))
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image)


def decode_full(data: bytes) -> np.ndarray:
    """Reference decode: every pixel, then resize to 224."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=3.0))


# -- the benchmark ------------------------------------------------------------------------------


def save_noop_model(path: Path) -> Path:
    """Save a pyfunc that ignores its input and returns a one-row DataFrame.

    It keeps ``TCP_NODELAY`` on as the eye model does (:mod:`eye_model.server_socket`), so
    that with several workers it still measures MLflow's own cost per request.
    """
    import mlflow
    import pandas as pd

    # MLflow warns (bypassing warning filters) that predict has no type hints; none are
    # wanted here: a type-hinted model would not accept the same dataframe_split body.
    with contextlib.redirect_stderr(io.StringIO()):

        class NoOp(mlflow.pyfunc.PythonModel):
            def load_context(self, context: Any) -> None:
                # As the eye model does: uvicorn --workers N would otherwise leave Nagle on
                # and add ~44 ms to every answer, which is not MLflow's cost.
                from eye_model.server_socket import keep_tcp_nodelay

                keep_tcp_nodelay()

            def predict(self, context: Any, model_input: Any, params: Any = None) -> pd.DataFrame:
                return pd.DataFrame({"ok": [len(model_input)]})

        # Explicit requirements: inferring them would load the model in a subprocess.
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=NoOp(),
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"pandas=={pd.__version__}"],
        )
    return path


class RawNetwork:
    """The raw network as a served model runs it: uint8 images in, logits out, nothing else.

    ``tflite`` (``EYE_MODEL_NETWORK_RUNTIME``'s default): the network alone compiled by
    TensorFlow Lite and run as the served model runs it (``eye_model.inference.LiteNetwork``:
    chunks of at most ``LITE_CHUNK`` images, or ``chunk``), one thread per core unless
    ``threads``. ``tensorflow``: a ``tf.function`` with a fixed uint8 signature, on tensors
    made before the timing.
    """

    def __init__(
        self, network: Any, runtime: str = "tflite", threads: int = 0, chunk: int = 0
    ) -> None:
        import tensorflow as tf

        from eye_model.inference import available_cpus, compile_lite

        spec = tf.TensorSpec([None, *network.input_shape[1:3], 3], tf.uint8, name="images")

        @tf.function(input_signature=[spec])
        def raw(images: tf.Tensor) -> tf.Tensor:
            return network(tf.cast(images, tf.float32), training=False)

        self.runtime = runtime
        self._function = raw
        self._lite = None
        if runtime == "tflite":
            from eye_model.inference import LiteNetwork

            self._lite = LiteNetwork(compile_lite(raw), threads or available_cpus(), chunk)

    def ready(self, pixels: np.ndarray) -> Any:
        """``pixels`` as the runtime takes them (made before any timing)."""
        import tensorflow as tf

        return np.ascontiguousarray(pixels) if self._lite else tf.constant(pixels)

    def __call__(self, ready: Any) -> np.ndarray:
        if self._lite is None:
            return np.asarray(self._function(ready))
        return np.asarray(self._lite(ready)[0])


def check_output(frame: Any, rows: int) -> None:
    """Fail loudly if the pyfunc did not score every row (the timing would be meaningless)."""
    if len(frame) != rows or frame["error"].notna().any():
        errors = frame["error"].dropna().unique()[:3]
        raise RuntimeError(f"the pyfunc returned {len(frame)} rows, errors: {list(errors)}")


class Benchmark:
    """Holds the model, the network, the images, and what was measured."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.loads: list[float] = []
        self.others: list[float] = []
        self.goals: list[GoalResult] = []

    # -- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Render the images, build, save and load the model, compile the raw network."""
        start = time.perf_counter()
        bases, generator = render_bases(1 if self.args.quick else 4, seed=0)
        self.big, self.small = make_jpegs(bases, BATCH, seed=1)
        big_kb = [len(x) / 1024 for x in self.big]
        small_kb = [len(x) / 1024 for x in self.small]
        print(
            f"  images: {len(self.big)} x {BIG_SIDE} px JPEG q{JPEG_QUALITY} "
            f"({min(big_kb):.0f}-{max(big_kb):.0f} KB, median {p50(big_kb):.0f} KB) and "
            f"{len(self.small)} x {SIZE} px ({p50(small_kb):.0f} KB) from {generator}, "
            f"{time.perf_counter() - start:.1f} s"
        )
        self.big_b64 = [b64(x) for x in self.big]
        self.small_b64 = [b64(x) for x in self.small]

        start = time.perf_counter()
        import keras
        import mlflow
        import pandas as pd
        import tensorflow as tf

        from eye_model.network import build_network
        from eye_model.pyfunc import ModelConfig, save_model

        keras.utils.set_random_seed(0)
        self.network = (
            self.calibrated_network(self.args.raw_batch_ms, self.args.runtime)
            if self.args.raw_batch_ms
            else build_network("small_cnn", SIZE)
        )
        config = ModelConfig(SIZE, ood=fit_ood_of(self.network))
        self.model_dir = save_model(self.workdir / "model", self.network, config)
        self.model = mlflow.pyfunc.load_model(str(self.model_dir))
        self.raw = RawNetwork(self.network, self.args.runtime)
        pixels = np.stack([decode_draft(x) for x in self.small])
        self.ready32 = self.raw.ready(pixels)
        self.ready1 = self.raw.ready(pixels[:1])
        self.frame_small = pd.DataFrame({"image": self.small_b64})
        self.frame_big = pd.DataFrame({"image": self.big_b64})
        self.frame_big_bytes = pd.DataFrame({"image": self.big})  # the pyfunc accepts bytes too
        for _ in range(3):  # warm-up: tracing, oneDNN primitive caches, thread pools
            self.raw(self.ready32)
            self.raw(self.ready1)
        check_output(self.model.predict(self.frame_small), BATCH)
        check_output(self.model.predict(self.frame_big), BATCH)
        check_output(self.model.predict(self.frame_big_bytes), BATCH)
        served_on = self.model.unwrap_python_model().runner.runtime
        if served_on != self.args.runtime:  # the ratios would compare two runtimes
            raise RuntimeError(
                f"the model runs on {served_on}, the raw network on {self.raw.runtime}"
            )
        print(
            f"  model saved and loaded, network traced: {time.perf_counter() - start:.1f} s "
            f"(network on {self.args.runtime}; TensorFlow {tf.__version__}, intra-op "
            f"threads "
            f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
            f"MLflow {mlflow.__version__})"
        )
        self.compare_runtimes(pixels)

    def compare_runtimes(self, pixels: np.ndarray) -> None:
        """Print the raw batch of 32 on both runtimes (the other one for comparison only).

        TensorFlow Lite also in one call of 32 (its served chunks are smaller and faster).
        """
        figures = {}
        variants = {
            "tensorflow": ("tensorflow", 0),
            "tflite": ("tflite", 0),
            "tflite in one call": ("tflite", BATCH),
        }
        for name, (runtime, chunk) in variants.items():
            if name == self.raw.runtime:
                raw = self.raw
            else:
                raw = RawNetwork(self.network, runtime, chunk=chunk)
            ready = raw.ready(pixels)
            raw(ready)
            cpu = time.process_time()
            wall = p50([timed(lambda r=raw, x=ready: r(x)) for _ in range(7)])
            figures[name] = (1000.0 * wall, 1000.0 * (time.process_time() - cpu) / (7 * BATCH))
        print(
            "  raw batch of 32: "
            + ", ".join(f"{k} {w:.1f} ms ({c:.2f} ms CPU/image)" for k, (w, c) in figures.items())
        )

    @staticmethod
    def calibrated_network(target_ms: float, runtime: str) -> Any:
        """``small_cnn`` narrowed until its raw batch of 32 takes about ``target_ms`` here.

        It stands for a faster CPU: the wrapper's own costs (decoding, Python, MLflow) stay
        at this machine's pace while the network's shrink, so its fixed costs weigh as they
        would there, or more (a faster CPU runs Python faster too).
        """
        import keras

        from eye_model.network import build_small_cnn

        zeros = np.zeros((BATCH, SIZE, SIZE, 3), np.uint8)
        low, high = 0.05, 1.0
        best: tuple[float, float, Any] | None = None
        for _ in range(7):  # bisection on the width
            width = (low * high) ** 0.5
            keras.utils.set_random_seed(0)
            network = build_small_cnn(SIZE, width=width)
            raw = RawNetwork(network, runtime)
            ready = raw.ready(zeros)
            for _ in range(3):
                raw(ready)
            took = 1000.0 * p50([timed(lambda r=raw, x=ready: r(x)) for _ in range(9)])
            if best is None or abs(took - target_ms) < abs(best[1] - target_ms):
                best = (width, took, network)
            low, high = (width, high) if took < target_ms else (low, width)
        assert best is not None
        print(
            f"  standing for a faster CPU: small_cnn at width {best[0]:.3f} takes "
            f"{best[1]:.1f} ms per raw batch of {BATCH} here (asked: {target_ms:g} ms)"
        )
        keras.utils.set_random_seed(0)
        return best[2]

    def raw_batch(self) -> float:
        """Seconds for one raw network call at batch 32."""
        return timed(lambda: self.raw(self.ready32))

    def raw_single(self) -> float:
        """Seconds for one raw network call at batch 1."""
        return timed(lambda: self.raw(self.ready1))

    # -- phases -------------------------------------------------------------------------------

    def measure_network(self) -> None:
        """Raw network (batch 32 and 1) interleaved with the pyfunc on 224 px JPEGs (goal A)."""
        rounds = 6 if self.args.quick else 24
        raw32: list[float] = []
        raw1: list[float] = []
        raw8: list[float] = []
        wrapped: list[float] = []
        quarters = [self.ready32[i : i + BATCH // 4] for i in range(0, BATCH, BATCH // 4)]
        for _ in range(rounds):
            raw32.append(self.raw_batch())
            wrapped.append(timed(lambda: self.model.predict(self.frame_small)))
            raw1.extend(self.raw_single() for _ in range(3))
            raw8.append(timed(lambda: [self.raw(q) for q in quarters]))
        raw_ips = BATCH / p50(raw32)
        wrapped_ips = BATCH / p50(wrapped)
        print(
            f"  raw network, batch {BATCH}: p50 {p50(raw32) * 1e3:.1f} ms/batch = "
            f"{raw_ips:.1f} images/s ({p50(raw32) * 1e3 / BATCH:.2f} ms/image), "
            f"{rounds} batches"
        )
        print(
            f"  raw network, batch 1: p50 {p50(raw1) * 1e3:.2f} ms "
            f"(p90 {p90(raw1) * 1e3:.2f} ms), {len(raw1)} calls"
        )
        print(
            f"  context: raw network, batch {BATCH // 4} (4 calls): "
            f"{BATCH / p50(raw8):.1f} images/s = {p50(raw32) / p50(raw8):.3f} x batch {BATCH}; "
            f"the pyfunc uses batches of {self.model.unwrap_python_model().batch_size}"
        )
        ratio = wrapped_ips / raw_ips
        print(
            f"  pyfunc predict, {BATCH} x {SIZE} px base64 JPEGs: p50 {p50(wrapped) * 1e3:.1f} ms "
            f"= {wrapped_ips:.1f} images/s -> {ratio:.3f} x raw (goal >= {GOAL_A_MIN_RATIO:.2f})"
        )
        self.goals.append(
            GoalResult(
                "A wrapper overhead (224 px, batch 32)",
                f"{wrapped_ips:.1f} img/s vs raw {raw_ips:.1f}",
                f">= {GOAL_A_MIN_RATIO:.2f} x raw",
                ratio,
                ratio >= GOAL_A_MIN_RATIO,
            )
        )

    def measure_decode(self) -> None:
        """Draft baseline interleaved with ``decode_image`` on 2000 px JPEGs (goal B)."""
        from eye_model.preprocess import decode_image

        passes = 1 if self.args.quick else 3
        for data in self.big[:4]:  # warm-up
            decode_draft(data)
            decode_image(data, SIZE)
        draft: list[float] = []
        library: list[float] = []
        no_stats: list[float] = []
        for _ in range(passes):
            for data in self.big:
                draft.append(timed(lambda d=data: decode_draft(d)))
                library.append(timed(lambda d=data: decode_image(d, SIZE)))
                no_stats.append(timed(lambda d=data: decode_image(d, SIZE, with_stats=False)))
        full = [
            timed(lambda d=data: decode_full(d))
            for data in self.big[: 4 if self.args.quick else 10]
        ]
        ratio = p50(library) / p50(draft)
        print(
            f"  draft decode (open + draft + convert + resize): p50 {p50(draft) * 1e3:.2f} ms "
            f"(p90 {p90(draft) * 1e3:.2f}), {len(draft)} decodes"
        )
        print(f"  full decode, no draft (reference): p50 {p50(full) * 1e3:.2f} ms, {len(full)}")
        print(
            f"  decode_image: p50 {p50(library) * 1e3:.2f} ms (p90 {p90(library) * 1e3:.2f}) "
            f"= {ratio:.3f} x draft (goal <= {GOAL_B_MAX_MS:g} ms)"
        )
        print(
            f"  context: decode_image(with_stats=False): p50 {p50(no_stats) * 1e3:.2f} ms "
            f"= {p50(no_stats) / p50(draft):.3f} x draft"
        )
        self.goals.append(
            GoalResult(
                "B decode_image (2000 px JPEG)",
                f"{p50(library) * 1e3:.2f} ms (draft {p50(draft) * 1e3:.2f} ms)",
                f"<= {GOAL_B_MAX_MS:g} ms",
                ratio,
                p50(library) * 1e3 <= GOAL_B_MAX_MS,
            )
        )

    def measure_end_to_end(self) -> None:
        """Pyfunc on 2000 px JPEGs interleaved with raw batches and serial draft decodes (C)."""
        rounds = 5 if self.args.quick else 20
        raw32: list[float] = []
        decode32: list[float] = []
        pooled32: list[float] = []
        wrapped: list[float] = []
        wrapped_bytes: list[float] = []
        cpu: list[float] = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(decode_draft, self.big[:4]))
            for _ in range(rounds):
                cpu_start = time.process_time()
                raw32.append(self.raw_batch())
                cpu.append((time.process_time() - cpu_start) / raw32[-1])
                decode32.append(timed(lambda: [decode_draft(x) for x in self.big]))
                pooled32.append(timed(lambda p=pool: list(p.map(decode_draft, self.big))))
                wrapped.append(timed(lambda: self.model.predict(self.frame_big)))
                wrapped_bytes.append(timed(lambda: self.model.predict(self.frame_big_bytes)))
        t_raw = p50(raw32) / BATCH
        t_decode = p50(decode32) / BATCH
        limit = 1.0 / (t_raw + t_decode / 2.0)
        wrapped_ips = BATCH / p50(wrapped)
        ratio = wrapped_ips / limit
        speedup = p50(decode32) / p50(pooled32)
        limit_seen = 1.0 / (t_raw + t_decode / max(1.0, min(2.0, speedup)))
        print(
            f"  baselines in this phase: t_raw {t_raw * 1e3:.2f} ms/image, "
            f"t_decode {t_decode * 1e3:.2f} ms/image -> two-core limit "
            f"1 / (t_raw + t_decode / 2) = {limit:.1f} images/s"
        )
        print(
            f"  pyfunc predict, {BATCH} x {BIG_SIDE} px base64 JPEGs: p50 "
            f"{p50(wrapped) * 1e3:.1f} ms = {wrapped_ips:.1f} images/s -> {ratio:.3f} x limit "
            f"(goal >= {GOAL_C_MIN_RATIO:.2f}); {rounds} batches"
        )
        print(
            f"  context: the raw network kept {p50(cpu):.2f} cores busy (CPU/wall); the draft "
            f"decode on 2 threads ran {speedup:.2f}x the 1-thread speed (the limit assumes "
            f"2.00x); with the measured speedup the limit is {limit_seen:.1f} images/s and the "
            f"pyfunc reaches {wrapped_ips / limit_seen:.3f} x that"
        )
        bytes_ips = BATCH / p50(wrapped_bytes)
        print(
            f"  context: the same images as bytes (no base64 to decode): p50 "
            f"{p50(wrapped_bytes) * 1e3:.1f} ms = {bytes_ips:.1f} images/s = "
            f"{bytes_ips / limit:.3f} x limit"
        )
        self.goals.append(
            GoalResult(
                "C end to end (2000 px, batch 32)",
                f"{wrapped_ips:.1f} img/s vs limit {limit:.1f}",
                f">= {GOAL_C_MIN_RATIO:.2f} x limit",
                ratio,
                ratio >= GOAL_C_MIN_RATIO,
            )
        )

    def measure_serving(self) -> None:
        """One 2000 px image per request to the served model and to a served no-op (goal D)."""
        import requests

        from eye_model.stack import (
            build_serve_command,
            find_free_port,
            start_process,
            stop_process,
            wait_for_http,
        )

        noop_dir = save_noop_model(self.workdir / "noop")
        body = json.dumps(
            {"dataframe_split": {"columns": ["image"], "data": [[self.big_b64[0]]]}}
        ).encode()
        tiny = json.dumps({"dataframe_split": {"columns": ["image"], "data": [["eA=="]]}}).encode()
        headers = {"Content-Type": "application/json"}
        servers: dict[str, tuple[Any, str, Path]] = {}
        try:
            start = time.perf_counter()
            for name, model_dir in (("eye", self.model_dir), ("noop", noop_dir)):
                port = find_free_port()
                log = self.workdir / f"serve-{name}.log"
                command = build_serve_command(str(model_dir), port=port, env_manager="local")
                servers[name] = (
                    start_process(command, log_path=log),
                    f"http://127.0.0.1:{port}",
                    log,
                )
            for process, url, _ in servers.values():
                wait_for_http(f"{url}/ping", timeout=180, process=process)
            print(f"  both servers answer /ping after {time.perf_counter() - start:.1f} s")
            session = requests.Session()

            def post(name: str, payload: bytes = body) -> Any:
                response = session.post(
                    f"{servers[name][1]}/invocations", data=payload, headers=headers, timeout=60
                )
                if response.status_code != 200:
                    raise RuntimeError(f"{name} answered {response.status_code}: {response.text}")
                return response

            for _ in range(8):  # warm-up
                post("eye")
                post("noop")
            prediction = post("eye").json()["predictions"][0]
            if prediction.get("error"):
                raise RuntimeError(f"the served model returned an error: {prediction['error']}")
            requests_count = 15 if self.args.quick else 60
            served: list[float] = []
            noop: list[float] = []
            noop_tiny: list[float] = []
            raw1: list[float] = []
            draft: list[float] = []
            for _ in range(requests_count):
                served.append(timed(lambda: post("eye")))
                noop.append(timed(lambda: post("noop")))
                noop_tiny.append(timed(lambda: post("noop", tiny)))
                raw1.append(self.raw_single())
                draft.append(timed(lambda: decode_draft(self.big[0])))
        except Exception as exc:
            traceback.print_exc()
            for _, _, log in servers.values():
                if log.exists():
                    print(f"  --- tail of {log.name}:\n" + log.read_text()[-3000:])
            self.goals.append(GoalResult("D served single image", f"error: {exc}", "", None, None))
            return
        finally:
            for process, _, _ in servers.values():
                stop_process(process)
        budget = p50(raw1) + p50(draft) + GOAL_D_SLACK_MS / 1e3
        ratio = p50(served) / budget
        print(
            f"  request body: {len(body) / 1024:.0f} KB (one {len(self.big[0]) / 1024:.0f} KB JPEG)"
        )
        print(
            f"  baselines in this phase: raw batch 1 p50 {p50(raw1) * 1e3:.2f} ms, "
            f"draft decode p50 {p50(draft) * 1e3:.2f} ms -> budget "
            f"{budget * 1e3:.2f} ms (+{GOAL_D_SLACK_MS:g} ms)"
        )
        print(
            f"  served eye model: p50 {p50(served) * 1e3:.2f} ms (p90 {p90(served) * 1e3:.2f}) "
            f"= {ratio:.3f} x budget; {requests_count} requests"
        )
        print(
            f"  served no-op pyfunc (MLflow scoring-server floor, same body): "
            f"p50 {p50(noop) * 1e3:.2f} ms (p90 {p90(noop) * 1e3:.2f}); with a "
            f"{len(tiny)} byte body: p50 {p50(noop_tiny) * 1e3:.2f} ms"
        )
        print(
            f"  context: eye model minus floor {(p50(served) - p50(noop)) * 1e3:.2f} ms vs "
            f"raw + draft {(p50(raw1) + p50(draft)) * 1e3:.2f} ms; minus floor it is "
            f"{(p50(served) - p50(noop)) / budget:.3f} x budget"
        )
        self.goals.append(
            GoalResult(
                "D served single 2000 px image",
                f"{p50(served) * 1e3:.1f} ms (no-op floor {p50(noop) * 1e3:.1f} ms)",
                f"<= {budget * 1e3:.1f} ms",
                ratio,
                ratio <= 1.0,
            )
        )

    # -- report -------------------------------------------------------------------------------

    def summary(self) -> None:
        """Print the summary table."""
        print(f"\n== summary  [{load_text()}]")
        load_min, load_max = min(self.loads), max(self.loads)
        print(f"  1-minute load at the phase starts: {load_min:.2f}-{load_max:.2f}")
        if self.others:
            print(
                "  cores used by other processes during the phases: "
                + ", ".join(f"{x:.2f}" for x in self.others)
            )
        header = f"  {'goal':<40} {'measured':<38} {'target':<20} {'ratio':>6}  result"
        print(header)
        print("  " + "-" * (len(header) - 2))
        for goal in self.goals:
            ratio = f"{goal.ratio:.3f}" if goal.ratio is not None else "-"
            print(
                f"  {goal.name:<40} {goal.measured:<38} {goal.target:<20} {ratio:>6}  "
                f"{goal.verdict}"
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (CI smoke)")
    parser.add_argument("--skip-serving", action="store_true", help="skip goal D")
    parser.add_argument(
        "--raw-batch-ms",
        type=float,
        default=None,
        metavar="MS",
        help="stand for a faster CPU: narrow the network until its raw batch of 32 takes "
        "about MS ms here (e.g. 42); every goal is then judged with it",
    )
    parser.add_argument(
        "--runtime",
        choices=("tflite", "tensorflow"),
        default="tflite",
        help="what runs the network, raw and in the model (EYE_MODEL_NETWORK_RUNTIME)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if a goal fails or cannot be measured"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = parse_args(argv)
    # Quiet TensorFlow and MLflow (here and in the servers, which inherit the environment).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["EYE_MODEL_NETWORK_RUNTIME"] = args.runtime  # the model's, as the raw one's
    warnings.filterwarnings("ignore", module="mlflow")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eye-model-bench-") as tmp:
        bench = Benchmark(args, Path(tmp))
        steps: list[tuple[str, Callable[[], None]]] = [
            ("setup", bench.setup),
            ("1. raw network and 3. goal A (pyfunc on 224 px JPEGs)", bench.measure_network),
            ("2. best-known decode and 4. goal B (2000 px JPEGs)", bench.measure_decode),
            ("5. goal C (pyfunc end to end, 2000 px JPEGs, batch 32)", bench.measure_end_to_end),
        ]
        if not args.skip_serving:
            steps.append(("6. goal D (served single 2000 px image)", bench.measure_serving))
        for title, step in steps:
            with phase(title, bench.loads, bench.others):
                step()
        bench.summary()
    print(f"  total time {time.perf_counter() - started:.0f} s")
    failed = [goal for goal in bench.goals if not goal.passed]
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
