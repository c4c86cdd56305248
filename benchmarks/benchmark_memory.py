"""Memory of a model server under a burst of giant images (issue 15, deliverable 4).

Starts a real ``mlflow models serve`` of a tiny eye-model, sends 12 concurrent one-image
requests of a 6300x6300 16-bit RGBA PNG (0.5 MB on the wire, 318 MB decoded), and
measures the resident memory of the server's process group (VmRSS summed over
/proc/<pid>/status): idle (after a warm-up request), the peak during the burst, and 30 s
after it. Goal: peak ≤ idle + 2.5 GB, after ≤ idle + 0.5 GB.

    python benchmarks/benchmark_memory.py [--requests 12] [--decode-memory-mb 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1024**3
PEAK_GOAL = 2.5 * GB
AFTER_GOAL = 0.5 * GB


def group_rss(pgid: int) -> int:
    """Resident bytes of every process in process group ``pgid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            # Fields after the command name (which may hold spaces): state ppid pgrp ...
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


class Sampler(threading.Thread):
    """Samples the group's RSS every 50 ms and keeps the highest."""

    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid = pgid
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, group_rss(self.pgid))
            self._stop_event.wait(0.05)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def _save_tiny_model(folder: Path) -> Path:
    import keras

    from eye_model.network import build_network
    from eye_model.pyfunc import ModelConfig, save_model

    keras.utils.set_random_seed(0)
    network = build_network("small_cnn", 64)
    return save_model(folder / "model", network, ModelConfig(image_size=64))


def _post(url: str, image: str) -> tuple[int, float, str | None]:
    payload = {"dataframe_split": {"columns": ["image"], "data": [[image]]}}
    start = time.monotonic()
    response = requests.post(f"{url}/invocations", json=payload, timeout=300)
    elapsed = time.monotonic() - start
    error = None
    if response.status_code == 200:
        error = response.json()["predictions"][0]["error"]
    return response.status_code, elapsed, error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=12, help="concurrent requests")
    parser.add_argument("--side", type=int, default=6300, help="side of the PNG, in pixels")
    parser.add_argument("--after", type=float, default=30.0, help="seconds to wait after")
    parser.add_argument(
        "--decode-memory-mb", type=int, default=None, help="the worker's decode budget"
    )
    args = parser.parse_args()

    from eye_model.preprocess import compute_image_stats  # noqa: F401 - warms imports
    from eye_model.settings import settings_environ
    from eye_model.stack import (
        build_serve_command,
        find_free_port,
        server_environment,
        start_process,
        stop_process,
        wait_for_http,
    )
    from tests.helpers import b64, draw_fundus_like, encode, sixteen_bit_rgba_png

    giant = b64(sixteen_bit_rgba_png(args.side))
    print(f"image: {args.side}x{args.side} 16-bit RGBA PNG, {len(giant) * 3 // 4:,} bytes")
    with tempfile.TemporaryDirectory(prefix="eye-model-memory-") as tmp:
        model = _save_tiny_model(Path(tmp))
        port = find_free_port()
        extra = {"ENABLE_MLFLOW_TRACKING": "false", **settings_environ(telemetry_mode="never")}
        if args.decode_memory_mb is not None:
            extra.update(settings_environ(decode_memory_mb=args.decode_memory_mb))
        command = build_serve_command(str(model), port=port, env_manager="local")
        process = start_process(
            command, log_path=Path(tmp) / "server.log", env=server_environment(extra)
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/ping", timeout=300, process=process)
            small = b64(encode(draw_fundus_like(300, seed=1), "JPEG"))
            for _ in range(3):
                _post(url, small)
            time.sleep(2.0)
            idle = group_rss(process.pid)
            sampler = Sampler(process.pid)
            sampler.start()
            start = time.monotonic()
            with ThreadPoolExecutor(args.requests) as pool:
                results = list(pool.map(lambda _: _post(url, giant), range(args.requests)))
            burst_s = time.monotonic() - start
            peak = sampler.stop()
            time.sleep(args.after)
            after = group_rss(process.pid)
        finally:
            stop_process(process)
    statuses = sorted({status for status, _, _ in results})
    errors = [error for _, _, error in results if error]
    slowest = max(elapsed for _, elapsed, _ in results)
    print(
        f"requests: {args.requests} concurrent, HTTP {statuses}, {len(errors)} row errors, "
        f"burst {burst_s:.1f} s, slowest answer {slowest:.1f} s"
    )
    for error in sorted(set(errors)):
        print(f"  error: {error}")
    print(f"idle RSS:  {idle / GB:.2f} GB")
    print(f"peak RSS:  {peak / GB:.2f} GB  (idle + {(peak - idle) / GB:.2f} GB; goal ≤ +2.5 GB)")
    print(
        f"after {args.after:g} s: {after / GB:.2f} GB  "
        f"(idle + {(after - idle) / GB:.2f} GB; goal ≤ +0.5 GB)"
    )
    ok = peak - idle <= PEAK_GOAL and after - idle <= AFTER_GOAL and statuses == [200]
    ok = ok and not errors
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
