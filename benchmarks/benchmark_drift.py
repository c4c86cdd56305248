"""Benchmark of the drift job's core on a large window: time and peak memory vs budget.

Generates synthetic inference records (1,000,000 by default, 1% errors) and a
reference profile (2,000 rows), then times :func:`eye_model.drift.compute_drift`
on the whole window and measures the peak resident memory it adds. Exits 1
when the budget (60 s, 2 GB by default) is exceeded.

Absolute times on a shared machine are noise, so the script also prints the
ratio to a floor measured in the same run: one ``np.sort`` of every tested
column of the window (the least any exact two-sample test must do).

Usage (from the repository root, after ``pip install -e .``)::

    python benchmarks/benchmark_drift.py
    python benchmarks/benchmark_drift.py --records 200000 --html /tmp/drift.html
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from eye_model.drift import (
    IMAGE_FEATURES,
    OUTPUT_FEATURES,
    DriftConfig,
    compute_drift,
    select_window,
    write_html_report,
)
from eye_model.drift.validation import simulate_records

_STATUS_FILE = Path("/proc/self/status")
_CLEAR_REFS_FILE = Path("/proc/self/clear_refs")


def read_memory_mib(field: str) -> float | None:
    """A memory figure of this process from /proc (``VmRSS`` now, ``VmHWM`` peak), in MiB."""
    try:
        for line in _STATUS_FILE.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def reset_peak_memory() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False when not possible."""
    try:
        _CLEAR_REFS_FILE.write_text("5")
    except OSError:
        return False
    return True


def measure_sort_floor(window: pd.DataFrame) -> float:
    """Seconds to sort every column the continuous tests use, once (the floor)."""
    columns = [c for c in (*OUTPUT_FEATURES, *IMAGE_FEATURES) if c in window.columns]
    start = time.perf_counter()
    for column in columns:
        np.sort(window[column].to_numpy(dtype=np.float64, na_value=np.nan))
    return time.perf_counter() - start


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="window size (rows)")
    parser.add_argument("--reference", type=int, default=2_000, help="reference rows")
    parser.add_argument("--error-rate", type=float, default=0.01, help="share of error rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time budget (s)")
    parser.add_argument("--max-memory-mb", type=float, default=2048.0, help="peak RSS increase")
    parser.add_argument("--html", type=Path, default=None, help="also time the HTML report")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 within budget, 1 over it."""
    args = parse_arguments(argv)
    start = time.perf_counter()
    reference = simulate_records(args.reference, seed=args.seed, as_reference=True)
    records = simulate_records(args.records, seed=args.seed + 1, error_rate=args.error_rate)
    print(
        f"generated {len(records):,} records and {len(reference):,} reference rows "
        f"in {time.perf_counter() - start:.1f} s "
        f"(frame {records.memory_usage(deep=False).sum() / 2**20:.0f} MiB)"
    )
    floor_seconds = measure_sort_floor(records)

    gc.collect()
    rss_before = read_memory_mib("VmRSS")
    exact_peak = reset_peak_memory() and rss_before is not None
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    start = time.perf_counter()
    window = select_window(records, window=args.records)
    report = compute_drift(reference, window, DriftConfig(seed=args.seed))
    elapsed = time.perf_counter() - start

    if exact_peak:
        peak = read_memory_mib("VmHWM") or 0.0
        increase = peak - (rss_before or 0.0)
        how = "VmHWM after clear_refs"
    else:
        # Without clear_refs the lifetime peak may predate the call: an upper bound.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        increase = peak - min(maxrss_before, rss_before or maxrss_before)
        how = "ru_maxrss (upper bound)"

    print(f"compute_drift on {report.n_window:,} records: {elapsed:.2f} s")
    print(
        f"  floor (one sort of {len(OUTPUT_FEATURES) + len(IMAGE_FEATURES)} columns): "
        f"{floor_seconds:.2f} s; ratio {elapsed / max(floor_seconds, 1e-9):.1f}x"
    )
    print(f"  peak memory increase: {increase:.0f} MiB ({how}; peak RSS {peak:.0f} MiB)")
    print(
        f"  status={report.status} drift_test_detected={report.drift_test_detected} "
        f"drift_detected={report.drift_detected} "
        f"n_errors={report.n_errors} flagged={[r.feature for r in report.flagged_features]}"
    )
    if args.html is not None:
        start = time.perf_counter()
        path = write_html_report(report, reference, window, args.html)
        print(f"  HTML report {path} in {time.perf_counter() - start:.2f} s")

    over = []
    if elapsed > args.max_seconds:
        over.append(f"time {elapsed:.1f} s > {args.max_seconds:g} s")
    if increase > args.max_memory_mb:
        over.append(f"memory {increase:.0f} MiB > {args.max_memory_mb:g} MiB")
    if over:
        print("OVER BUDGET: " + "; ".join(over))
        return 1
    print(f"within budget ({args.max_seconds:g} s, {args.max_memory_mb:g} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
