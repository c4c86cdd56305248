"""Benchmark the served model under concurrent one-image clients against the machine's limit.

All figures come from one run on the same 512 px fundus JPEGs:

1. The machine limit: ``cores / (floor + network + decode)`` images/s, where
   - floor: MLflow's own CPU per request, a no-op pyfunc served the same way
     (``mlflow models serve --env-manager local``) under the same clients posting the same
     bodies; the CPU of the server's process tree and of this process (the clients) per
     request, read from ``/proc``. The machine's total from ``/proc/stat`` is printed
     beside it: on a shared machine it also counts everyone else;
   - network: ``time.process_time`` per image of the compiled raw network at batch 32 on
     ready inputs, on the runtime the served model uses (``--runtime``, default TensorFlow
     Lite as ``EYE_MODEL_NETWORK_RUNTIME``);
   - decode: ``time.process_time`` per image of Pillow's draft decode of the same JPEGs.

   The network and the decode are measured at setup and again before every round of every
   phase, and summed over the run: the machine's pace drifts by tens of per cent within
   minutes, and the limit must come from the same minutes as the load it is compared to.
2. The eye model served with telemetry on (local inference log), ``--workers`` uvicorn workers per
   server (default one per core; ``batching on, 1 worker`` is served too, for comparison), under
   ``--clients`` (default 8) closed-loop clients each posting one image at a time: images/s
   against the limit (goal >= 0.85), p50/p99 latency (goal p99 <= 400 ms), errors (goal none),
   CPU per image and the mean network batch; and the same with batching off
   (``EYE_MODEL_MAX_BATCH=1``) and, with ``--baseline-code DIR``, with another checkout's
   ``eye_model`` package (today's code) served the same way. All servers run at once and the
   clients visit them in turn, ``--rounds`` slices each, so that the load of other processes on a
   shared machine hits all alike. The CPU ratio (the limit's CPU per image over the measured one)
   says what the throughput ratio would be with every core free.
3. One client alone: p50 against raw batch 1 + draft decode + 8 ms (the served
   single-image goal of ``scripts/benchmark_predict.py``).
4. ``--soak-clients`` (64) clients for ``--soak-seconds`` (60 s): no error, p99 reported.
5. ``--wait-sweep 0,1,2,5``: the 8-client figure at each ``EYE_MODEL_MAX_WAIT_MS``.

Usage::

    python scripts/benchmark_concurrency.py
    python scripts/benchmark_concurrency.py --baseline-code /work/main/eye_model
    python scripts/benchmark_concurrency.py --quick   # shorter phases, no soak
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# The shared helpers live with the prediction benchmark; use them, not a copy.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchmark_batch import tree_cpu_seconds
from benchmark_predict import (
    SIZE,
    RawNetwork,
    b64,
    decode_draft,
    load_text,
    machine_cpu,
    render_bases,
    save_noop_model,
)

SIDE = 512
GOAL_RATIO = 0.85
GOAL_P99_MS = 400.0
SINGLE_SLACK_MS = 8.0

#: A server to start: model folder, variables added, uvicorn workers.
Spec = tuple[Path, dict[str, str], int]


@dataclass
class LoadResult:
    """What closed-loop clients measured against one server."""

    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    tree_cpu_s: float
    own_cpu_s: float
    machine_busy_cores: float | None

    @property
    def rate(self) -> float:
        """Answered requests (one image each) per second."""
        return (self.requests - self.errors) / self.seconds

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile latency in ms."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def cpu_ms_per_request(self) -> float:
        """CPU of the server's process tree and of the clients, per request, in ms."""
        return 1000.0 * (self.tree_cpu_s + self.own_cpu_s) / max(self.requests, 1)

    def merge(self, other: LoadResult) -> LoadResult:
        """This and ``other`` (a later slice against the same server) as one result."""
        busy = [x for x in (self.machine_busy_cores, other.machine_busy_cores) if x is not None]
        return LoadResult(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            seconds=self.seconds + other.seconds,
            latencies_ms=self.latencies_ms + other.latencies_ms,
            tree_cpu_s=self.tree_cpu_s + other.tree_cpu_s,
            own_cpu_s=self.own_cpu_s + other.own_cpu_s,
            machine_busy_cores=sum(busy) / len(busy) if busy else None,
        )

    def line(self) -> str:
        """One line: rate, latency percentiles, errors, CPU."""
        return (
            f"{self.rate:7.1f} images/s, p50 {self.percentile(50):6.1f} ms, p99 "
            f"{self.percentile(99):6.1f} ms, {self.errors} errors of {self.requests}, "
            f"{self.cpu_ms_per_request:.2f} ms CPU per image"
        )


def make_bodies(count: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` distinct 512 px fundus JPEGs and their ``dataframe_split`` request bodies."""
    bases, _ = render_bases(min(count, 4), seed=0)
    rng = np.random.default_rng(1)
    jpegs, bodies = [], []
    for i in range(count):
        base = Image.fromarray(bases[i % len(bases)]).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
        noisy = np.asarray(base, np.int16) + rng.normal(0, 3.3, (SIDE, SIDE, 3)).round()
        buffer = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
        payload = {"dataframe_split": {"columns": ["image"], "data": [[b64(buffer.getvalue())]]}}
        bodies.append(json.dumps(payload).encode())
    return jpegs, bodies


def answered(body: bytes) -> bool:
    """Whether a response body holds one prediction without an error (or the no-op's row)."""
    try:
        predictions = json.loads(body)["predictions"]
    except (ValueError, KeyError, TypeError):
        return False
    return len(predictions) == 1 and (
        "ok" in predictions[0] or predictions[0].get("predicted_class") is not None
    )


def run_clients(
    port: int, pid: int, bodies: Sequence[bytes], clients: int, seconds: float
) -> LoadResult:
    """``clients`` threads post one image at a time for ``seconds``; CPU is read around it."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds
    start_line = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": "application/json"}
        start_line.wait()
        i = k
        while time.monotonic() < stop:
            began = time.perf_counter()
            try:
                connection.request("POST", "/invocations", bodies[i % len(bodies)], headers)
                response = connection.getresponse()
                answer = response.read()
                failed = response.status != 200 or not answered(answer)
            except (OSError, http.client.HTTPException):
                failed = True
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            latencies[k].append((time.perf_counter() - began) * 1000.0)
            errors[k] += failed
            i += clients
        connection.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    tree_before, own_before, machine_before = (
        tree_cpu_seconds(pid),
        time.process_time(),
        machine_cpu(),
    )
    wall = time.perf_counter()
    start_line.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    machine_after = machine_cpu()
    busy = None
    if machine_before and machine_after and machine_after[0] > machine_before[0]:
        idle = (machine_after[1] - machine_before[1]) / (machine_after[0] - machine_before[0])
        busy = (1.0 - idle) * (os.cpu_count() or 1)
    flat = [x for per in latencies for x in per]
    return LoadResult(
        requests=len(flat),
        errors=sum(errors),
        seconds=wall,
        latencies_ms=flat,
        tree_cpu_s=tree_cpu_seconds(pid) - tree_before,
        own_cpu_s=time.process_time() - own_before,
        machine_busy_cores=busy,
    )


@contextlib.contextmanager
def served(
    model_dir: Path, log: Path, env: dict[str, str], workers: int = 1
) -> Iterator[tuple[int, int]]:
    """``mlflow models serve -w workers`` of ``model_dir`` with ``env``; yields (port, pid)."""
    from eye_model.stack import (
        build_serve_command,
        find_free_port,
        server_environment,
        start_process,
        stop_process,
        wait_for_http,
    )

    port = find_free_port()
    command = build_serve_command(str(model_dir), port=port, env_manager="local", workers=workers)
    process = start_process(command, log_path=log, env=server_environment(env))
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=300, process=process)
        yield port, process.pid
    except Exception:
        print(f"  --- tail of {log.name}:\n{log.read_text()[-3000:] if log.exists() else ''}")
        raise
    finally:
        stop_process(process)


def mean_batch(telemetry_dir: Path, windows: Sequence[tuple[float, float]]) -> float | None:
    """Mean ``batch_size`` of the log's scored records made within ``windows`` (epoch s)."""
    sizes = []
    for part in telemetry_dir.rglob("*.jsonl"):
        for line in part.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                when = record.get("timestamp", 0.0)
                within = any(start <= when <= end for start, end in windows)
                if within and record.get("status") == "ok" and record.get("batch_size"):
                    sizes.append(record["batch_size"])
    return float(np.mean(sizes)) if sizes else None


class Bench:
    """The models, the images, the baselines and the phases."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.goals: list[tuple[str, str, bool]] = []

    def setup(self) -> None:
        import keras

        from eye_model.network import build_network
        from eye_model.pyfunc import ModelConfig, save_model

        self.jpegs, self.bodies = make_bodies(16)
        keras.utils.set_random_seed(0)
        network = build_network("small_cnn", SIZE)
        self.model_dir = save_model(self.workdir / "model", network, ModelConfig(SIZE))
        self.noop_dir = save_noop_model(self.workdir / "noop")
        if self.args.baseline_code:
            self.baseline_dir = self.workdir / "baseline"
            shutil.copytree(self.model_dir, self.baseline_dir)
            shutil.rmtree(self.baseline_dir / "code" / "eye_model")
            shutil.copytree(
                self.args.baseline_code,
                self.baseline_dir / "code" / "eye_model",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        raw = RawNetwork(network, self.args.runtime)
        pixels = np.stack([decode_draft(self.jpegs[i % 16]) for i in range(32)])
        ready32, ready1 = raw.ready(pixels), raw.ready(pixels[:1])
        for _ in range(3):
            raw(ready32)
            raw(ready1)
        self.raw, self.ready32, self.ready1 = raw, ready32, ready1
        self.network_cpu = [0.0, 0]  # CPU seconds, images: every sample of the run adds up
        self.decode_cpu = [0.0, 0]
        self.singles: list[float] = []
        self.decode_walls: list[float] = []
        self.sample_baselines(3 if self.args.quick else 10)
        ready8 = raw.ready(pixels[:8])
        raw(ready8)
        cpu = time.process_time()
        for _ in range(20):
            raw(ready8)
        network8_ms = 1000.0 * (time.process_time() - cpu) / (8 * 20)
        kilobytes = float(np.median([len(j) for j in self.jpegs])) / 1024
        print(
            f"  {len(self.jpegs)} JPEGs of {SIDE} px ({kilobytes:.0f} KB median);"
            f" network CPU at batch 32: {self.network_ms:.2f} ms/image (batch 8: "
            f"{network8_ms:.2f}); raw batch 1 p50 "
            f"{self.raw1_ms:.2f} ms; draft decode CPU {self.decode_ms:.2f} ms/image "
            f"(p50 wall {self.decode_wall_ms:.2f} ms)"
        )

    def sample_baselines(self, batches: int) -> None:
        """Measure the limit's network and decode CPU again (summed over the run).

        Called at setup and before every round of :meth:`interleave`: the machine's pace
        drifts, and the limit must come from the same minutes as the load it is compared to.
        """
        cpu = time.process_time()
        for _ in range(batches):
            self.raw(self.ready32)
        self.network_cpu[0] += time.process_time() - cpu
        self.network_cpu[1] += 32 * batches
        for _ in range(batches):
            began = time.perf_counter()
            self.raw(self.ready1)
            self.singles.append(time.perf_counter() - began)
        cpu = time.process_time()
        for data in self.jpegs:
            began = time.perf_counter()
            decode_draft(data)
            self.decode_walls.append(time.perf_counter() - began)
        self.decode_cpu[0] += time.process_time() - cpu
        self.decode_cpu[1] += len(self.jpegs)

    @property
    def network_ms(self) -> float:
        """Network CPU per image at batch 32, over every sample so far."""
        return 1000.0 * self.network_cpu[0] / self.network_cpu[1]

    @property
    def decode_ms(self) -> float:
        """Draft decode CPU per image, over every sample so far."""
        return 1000.0 * self.decode_cpu[0] / self.decode_cpu[1]

    @property
    def raw1_ms(self) -> float:
        """Raw network batch 1, p50 over every sample so far."""
        return 1000.0 * float(np.median(self.singles))

    @property
    def decode_wall_ms(self) -> float:
        """Draft decode wall time, p50 over every sample so far."""
        return 1000.0 * float(np.median(self.decode_walls))

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """The server's variables: telemetry on, into a folder of its own, no tracking server."""
        from eye_model.stack import find_free_port

        folder = self.workdir / f"telemetry-{name}"
        return {
            "ENABLE_MLFLOW_TRACKING": "true",
            "EYE_MODEL_TELEMETRY_DIR": str(folder),
            "EYE_MODEL_NETWORK_RUNTIME": self.args.runtime,
            # Nothing listens there: records are written locally, delivery fails quietly.
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{find_free_port()}",
            **extra,
        }

    @contextlib.contextmanager
    def servers(self, specs: dict[str, Spec]) -> Iterator[dict[str, Any]]:
        """Start every server of ``specs`` (name: model folder, variables, workers) at once."""
        with contextlib.ExitStack() as stack:
            started = {}
            for name, (model_dir, extra, workers) in specs.items():
                env = self.env(name, **extra)
                log = self.workdir / f"serve-{name.replace(' ', '-')}.log"
                port, pid = stack.enter_context(served(model_dir, log, env, workers))
                started[name] = (port, pid, Path(env["EYE_MODEL_TELEMETRY_DIR"]))
            for port, pid, _ in started.values():  # warm-up
                run_clients(port, pid, self.bodies, self.args.clients, 2.0)
            yield started

    def interleave(
        self, started: dict[str, Any], clients: int, seconds: float
    ) -> dict[str, LoadResult]:
        """Run ``clients`` against each server in turn, in rounds, so load changes hit all."""
        rounds = 2 if self.args.quick else self.args.rounds
        results: dict[str, LoadResult] = {}
        windows: dict[str, list[tuple[float, float]]] = {name: [] for name in started}
        for _ in range(rounds):
            self.sample_baselines(2 if self.args.quick else 4)
            for name, (port, pid, _) in started.items():
                began = time.time()
                part = run_clients(port, pid, self.bodies, clients, seconds / rounds)
                windows[name].append((began, time.time()))
                results[name] = results[name].merge(part) if name in results else part
        time.sleep(1.0)  # the last records reach the log before predict returns; be safe
        for name, result in results.items():
            batch = mean_batch(started[name][2], windows[name])
            busy = f"{result.machine_busy_cores:.2f}" if result.machine_busy_cores else "?"
            batch_text = f", mean batch {batch:.1f}" if batch else ""
            print(f"  {name:<24} {result.line()}{batch_text} [machine {busy} cores busy]")
        return results

    def run(self) -> None:
        """The phases; see the module docstring."""
        quick, clients = self.args.quick, self.args.clients
        seconds = 8.0 if quick else self.args.seconds
        cores = os.cpu_count() or 1
        workers = self.args.workers
        specs: dict[str, Spec] = {
            "no-op": (self.noop_dir, {}, workers),
            "batching on": (self.model_dir, {}, workers),
            "batching off": (self.model_dir, {"EYE_MODEL_MAX_BATCH": "1"}, workers),
        }
        if workers != 1:
            specs["batching on, 1 worker"] = (self.model_dir, {}, 1)
        if self.args.baseline_code:
            specs["today's code"] = (self.baseline_dir, {}, workers)
        print(
            f"\n== {clients} clients, one image per request, {workers} worker(s) per server, "
            f"interleaved  [{load_text()}]"
        )
        with self.servers(specs) as started:
            results = self.interleave(started, clients, seconds)
            floor = results.pop("no-op")
            per_image = floor.cpu_ms_per_request + self.network_ms + self.decode_ms
            limit = cores / per_image * 1000.0
            print(
                f"  limit = {cores} cores / (floor {floor.cpu_ms_per_request:.2f} + network "
                f"{self.network_ms:.2f} + decode {self.decode_ms:.2f} = {per_image:.2f} ms CPU) "
                f"= {limit:.1f} images/s"
            )
            for name, result in results.items():
                print(
                    f"  {name:<24} {result.rate / limit:.3f} x limit; CPU per image "
                    f"{per_image / result.cpu_ms_per_request:.3f} x the limit's (what the "
                    f"ratio would be with {cores} free cores)"
                )
            on = results["batching on"]
            self.goals += [
                (
                    f"{clients} clients >= {GOAL_RATIO} x limit",
                    f"{on.rate / limit:.3f}",
                    on.rate / limit >= GOAL_RATIO,
                ),
                (
                    f"{clients} clients p99 <= {GOAL_P99_MS:g} ms",
                    f"{on.percentile(99):.1f} ms",
                    on.percentile(99) <= GOAL_P99_MS,
                ),
                (f"{clients} clients: no errors", str(on.errors), on.errors == 0),
            ]
            print(f"\n== one client alone  [{load_text()}]")
            alone = self.interleave(
                {k: v for k, v in started.items() if k in ("no-op", "batching on", "today's code")},
                1,
                seconds,
            )
            single = alone["batching on"].percentile(50)
            budget = self.raw1_ms + self.decode_wall_ms + SINGLE_SLACK_MS
            print(
                f"  p50 {single:.1f} ms against raw batch 1 + draft decode + "
                f"{SINGLE_SLACK_MS:g} ms = {budget:.1f} ms (no-op server: "
                f"{alone['no-op'].percentile(50):.1f} ms)"
            )
            self.goals.append(
                ("1 client p50 <= raw1 + decode + 8 ms", f"{single:.1f} ms", single <= budget)
            )
            if not quick and self.args.soak_seconds > 0:
                soak = self.args.soak_clients
                print(f"\n== {soak} clients for {self.args.soak_seconds:g} s  [{load_text()}]")
                port, pid, _ = started["batching on"]
                heavy = run_clients(port, pid, self.bodies, soak, self.args.soak_seconds)
                print(f"  {soak} clients: {heavy.line()}")
                self.goals.append(
                    (
                        f"{soak} clients: no errors",
                        f"{heavy.errors}, p99 {heavy.percentile(99):.0f} ms",
                        heavy.errors == 0,
                    )
                )
        if self.args.wait_sweep:
            print(f"\n== EYE_MODEL_MAX_WAIT_MS, {clients} clients, interleaved  [{load_text()}]")
            sweep: dict[str, Spec] = {
                f"max wait {wait:g} ms": (
                    self.model_dir,
                    {"EYE_MODEL_MAX_WAIT_MS": f"{wait:g}"},
                    self.args.workers,
                )
                for wait in self.args.wait_sweep
            }
            with self.servers(sweep) as started:
                self.interleave(started, clients, seconds)

    def summary(self) -> bool:
        print(f"\n== summary  [{load_text()}]")
        for name, measured, passed in self.goals:
            print(f"  {name:<42} {measured:<22} {'PASS' if passed else 'FAIL'}")
        return all(passed for _, _, passed in self.goals)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases, no soak")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="uvicorn workers of each server (default: one per core)",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per server")
    parser.add_argument("--rounds", type=int, default=3, help="slices per server")
    parser.add_argument("--soak-clients", type=int, default=64)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument(
        "--wait-sweep",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[],
        help="comma-separated EYE_MODEL_MAX_WAIT_MS values to compare (e.g. 0,1,2,5)",
    )
    parser.add_argument(
        "--baseline-code", type=Path, help="an eye_model package folder to serve as today's code"
    )
    parser.add_argument(
        "--runtime",
        choices=("tflite", "tensorflow"),
        default="tflite",
        help="what runs the network, raw and served (EYE_MODEL_NETWORK_RUNTIME)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if a goal fails")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    warnings.filterwarnings("ignore", module="mlflow")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eye-model-concurrency-") as tmp:
        bench = Bench(args, Path(tmp))
        print(f"== setup  [{load_text()}]")
        bench.setup()
        bench.run()
        passed = bench.summary()
    print(f"  total time {time.perf_counter() - started:.0f} s")
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
