"""Batching across concurrent requests: each caller gets its own rows, errors stay per row.

The network is the real compiled one; the only stand-ins hold a batch back (to make
callers queue behind it deterministically) or make one network call fail.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from eye_model.batching import SHUTDOWN_ERROR, NetworkBatcher
from eye_model.config import PROB_COLUMNS
from eye_model.pyfunc import EyeDiseaseClassifier, _decode_row, _fail_rows
from eye_model.scored import ScoredImage
from tests.helpers import b64, draw_fundus_like, encode

BAD_VALUES = ["not-an-image", b64(b"GIF89a broken"), ""]


@pytest.fixture(scope="module")
def classifier(tiny_model_path: Path) -> EyeDiseaseClassifier:
    model = mlflow.pyfunc.load_model(str(tiny_model_path)).unwrap_python_model()
    assert isinstance(model, EyeDiseaseClassifier)
    return model


def _with_batcher(
    model: EyeDiseaseClassifier, run_batch: Any = None, *, max_wait_s: float = 0.0
) -> EyeDiseaseClassifier:
    """A copy of ``model`` with a batcher of its own (around ``run_batch``, default the network)."""
    clone = copy.copy(model)
    clone._batcher = NetworkBatcher(
        run_batch or clone._score_batch, _fail_rows, max_batch=32, max_wait_s=max_wait_s
    )
    return clone


def _good(seed: int) -> str:
    return b64(encode(draw_fundus_like(72 + seed % 5 * 8, seed=seed), "JPEG"))


class Gate:
    """Holds the first batch back until released, so that callers queue behind it."""

    def __init__(self, classifier: EyeDiseaseClassifier) -> None:
        self.model = _with_batcher(classifier, self)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, batch: list[ScoredImage]) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(30)
        self.model._score_batch(batch)


class FailingRunner:
    """The real network, except that its ``fail_call``-th call raises (a simulated fault)."""

    def __init__(self, runner: Any, fail_call: int) -> None:
        self.runner = runner
        self.fail_call = fail_call
        self.calls = 0

    def run(self, images: np.ndarray) -> Any:
        self.calls += 1
        if self.calls == self.fail_call:
            raise RuntimeError("simulated network fault")
        return self.runner.run(images)


def _wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _queued_rows(batcher: NetworkBatcher[Any]) -> int:
    return batcher._queued_rows


def test_sixteen_concurrent_callers_get_their_own_rows(classifier: EyeDiseaseClassifier) -> None:
    """Rows of many requests share network calls; each caller checks its own ids and numbers."""
    model = _with_batcher(classifier, max_wait_s=0.02)
    requests: list[pd.DataFrame] = []
    for caller in range(16):
        values, ids = [], []
        for k in range(1 + caller % 4):
            bad = (caller + k) % 3 == 0
            values.append(BAD_VALUES[caller % 3] if bad else _good(100 * caller + k))
            ids.append(f"caller{caller}-row{k}")
        requests.append(pd.DataFrame({"image_id": ids, "image": values}))
    # Expected: each image scored alone, in a request of its own.
    alone = {
        image_id: classifier.predict(None, pd.DataFrame({"image": [value]})).iloc[0]
        for frame in requests
        for image_id, value in zip(frame["image_id"], frame["image"], strict=True)
    }
    start = threading.Barrier(16)

    def call(frame: pd.DataFrame) -> pd.DataFrame:
        start.wait()
        return model.predict(None, frame)

    for _ in range(3):
        with ThreadPoolExecutor(16) as pool:
            outputs = list(pool.map(call, requests))
        for frame, out in zip(requests, outputs, strict=True):
            assert out["image_id"].tolist() == frame["image_id"].tolist()
            for _, row in out.iterrows():
                expected = alone[row["image_id"]]
                if expected["error"] is None:
                    assert row["error"] is None, row["image_id"]
                    np.testing.assert_allclose(
                        row[list(PROB_COLUMNS)].to_numpy(float),
                        expected[list(PROB_COLUMNS)].to_numpy(float),
                        atol=1e-5,
                    )
                    assert row["predicted_class"] == expected["predicted_class"]
                else:
                    assert row["error"] == expected["error"]
                    assert pd.isna(row["predicted_class"])
    stats = model._batcher.stats
    # Requests hold at most 4 images: bigger calls mixed the rows of several requests.
    assert max(stats.sizes) > 4
    assert stats.mean_batch > 1.5


def test_a_request_alone_runs_at_once_in_its_own_thread(classifier: EyeDiseaseClassifier) -> None:
    threads: list[str] = []

    def run(batch: list[ScoredImage]) -> None:
        threads.append(threading.current_thread().name)
        model._score_batch(batch)

    model = _with_batcher(classifier, run, max_wait_s=5.0)  # a wait would show as 5 s
    started = time.perf_counter()
    out = model.predict(None, pd.DataFrame({"image": [_good(1)]}))
    assert time.perf_counter() - started < 2.0
    assert out["error"].isna().all()
    assert threads == [threading.current_thread().name]


def test_a_batch_waits_for_a_request_still_decoding_then_takes_it(
    classifier: EyeDiseaseClassifier,
) -> None:
    gate = Gate(classifier)
    batcher = gate.model._batcher
    batcher.max_wait_s = 5.0
    size = classifier.config.image_size
    rows = [_decode_row(k, _good(k), size, 10**8, 10**8) for k in range(3)]
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.score, [rows[0]])
        assert gate.entered.wait(30)
        with batcher.request() as late_score:  # announced: its image is "decoding"
            second = pool.submit(batcher.score, [rows[1]])
            _wait_until(lambda: _queued_rows(batcher) == 1)
            gate.release.set()
            time.sleep(0.2)  # the free network waits for the announced request ...
            assert second.running()
            late_score([rows[2]])  # ... and takes its row in the same call
        first.result(30)
        second.result(30)
    assert list(batcher.stats.sizes) == [1, 2]
    assert [row.batch_size for row in rows] == [1, 2, 2]
    assert all(row.error is None for row in rows)


def test_a_network_failure_fails_only_the_calls_in_that_batch(
    classifier: EyeDiseaseClassifier,
) -> None:
    gate = Gate(classifier)
    model = gate.model
    model.runner = FailingRunner(classifier.runner, fail_call=2)

    def call(k: int) -> pd.DataFrame:
        return model.predict(None, pd.DataFrame({"image": [_good(k), _good(k + 50)]}))

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(call, 0)
        assert gate.entered.wait(30)
        queued = [pool.submit(call, k) for k in (1, 2)]
        _wait_until(lambda: _queued_rows(model._batcher) == 4)
        gate.release.set()
        outputs = [first.result(30)] + [f.result(30) for f in queued]
    assert outputs[0]["error"].isna().all()
    for out in outputs[1:]:  # the two queued requests shared the failing call
        assert out["predicted_class"].isna().all()
        assert set(out["error"]) == {"the model failed on this image (RuntimeError); retry later"}
    assert list(model._batcher.stats.sizes) == [2, 4]
    assert call(3)["error"].isna().all()  # the next call is scored


@pytest.fixture
def held_back(classifier: EyeDiseaseClassifier) -> Iterator[tuple[EyeDiseaseClassifier, Gate]]:
    gate = Gate(classifier)
    yield gate.model, gate
    gate.release.set()


def test_shutdown_scores_the_waiting_requests_and_refuses_new_ones(
    held_back: tuple[EyeDiseaseClassifier, Gate],
) -> None:
    model, gate = held_back
    frames = [pd.DataFrame({"image": [_good(k)]}) for k in range(6)]
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(model.predict, None, frames[0])
        assert gate.entered.wait(30)
        waiting = [pool.submit(model.predict, None, frame) for frame in frames[1:]]
        _wait_until(lambda: _queued_rows(model._batcher) == 5)
        closing = pool.submit(model._batcher.close, 30.0)
        _wait_until(lambda: model._batcher._closed)
        refused = model.predict(None, frames[0])
        assert refused["error"].tolist() == [SHUTDOWN_ERROR]
        gate.release.set()
        assert closing.result(30) is True  # every waiting request was scored
        for future in [first, *waiting]:
            assert future.result(30)["error"].isna().all()


def test_shutdown_never_leaves_a_request_waiting_on_a_stuck_network(
    held_back: tuple[EyeDiseaseClassifier, Gate],
) -> None:
    model, gate = held_back
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(model.predict, None, pd.DataFrame({"image": [_good(0)]}))
        assert gate.entered.wait(30)
        waiting = [
            pool.submit(model.predict, None, pd.DataFrame({"image": [_good(k), "x"]}))
            for k in (1, 2)
        ]
        _wait_until(lambda: _queued_rows(model._batcher) == 2)
        started = time.perf_counter()
        assert model._batcher.close(0.3) is False
        for future in waiting:
            out = future.result(5)
            assert out["error"].iloc[0] == SHUTDOWN_ERROR
            assert "not valid base64" in out["error"].iloc[1]  # its own error is kept
        assert time.perf_counter() - started < 5
        assert not first.done()  # the running batch is not cut short ...
        gate.release.set()
        assert first.result(30)["error"].isna().all()  # ... and is delivered


def test_an_exception_out_of_the_batch_function_fails_only_its_rows() -> None:
    """The batcher's own guard, for a batch function that raises instead of marking rows."""
    calls: list[int] = []

    def run(batch: list[ScoredImage]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise MemoryError("simulated")
        for row in batch:
            row.probabilities = np.ones(4) / 4

    batcher: NetworkBatcher[ScoredImage] = NetworkBatcher(run, _fail_rows)
    first, second = [ScoredImage(index=0)], [ScoredImage(index=0)]
    batcher.score(first)
    batcher.score(second)
    assert first[0].error == "the model failed on this image (MemoryError); retry later"
    assert second[0].error is None and second[0].probabilities is not None
    assert batcher.stats.failed_batches == 1


# -- the network's threads in a multi-worker model server -------------------------------------


def test_model_server_workers_share_the_cores_and_only_a_process_alone_spins() -> None:
    from eye_model.inference import available_cpus, network_threading

    assert network_threading(1, cpus=2) == (0, True)  # alone: every core, spinning
    assert network_threading(2, cpus=2) == (1, False)
    assert network_threading(2, cpus=8) == (4, False)
    assert network_threading(4, cpus=2) == (1, False)  # never fewer than one thread
    assert network_threading(2) == (max(1, available_cpus() // 2), False)


def test_network_threading_applies_before_tensorflow_starts_and_a_late_change_is_reported() -> None:
    import subprocess
    import sys

    script = (
        "import logging; logging.basicConfig()\n"
        "from eye_model.inference import use_network_threading\n"
        "import tensorflow as tf\n"
        "from tensorflow.python.eager import context\n"
        "assert use_network_threading(1, spinning=False)\n"
        "(tf.constant([1.0]) * 2).numpy()\n"  # TensorFlow starts with these settings
        "config = context.context().config\n"
        "print('threads', config.intra_op_parallelism_threads)\n"
        "print('spinning off', config.experimental.disable_thread_spinning)\n"
        "print('same again', use_network_threading(1, spinning=False))\n"
        "print('late change applied', use_network_threading(2, spinning=True))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threads 1\nspinning off True\nsame again True\n" in done.stdout
    assert "late change applied False" in done.stdout
    assert "EYE_MODEL_NETWORK_THREADS=2 (spinning on) came after TensorFlow started" in (
        done.stderr
    )


# -- the fundus check beside the network ---------------------------------------------------------


def _black() -> str:
    from PIL import Image

    return b64(encode(Image.new("RGB", (64, 64)), "JPEG"))


def test_the_fundus_check_runs_beside_the_network_in_the_helper_thread(
    classifier: EyeDiseaseClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eye_model.pyfunc as pyfunc_module

    threads: list[str] = []
    check = pyfunc_module.check_fundus

    def recording_check(pixels: np.ndarray) -> list[str]:
        threads.append(threading.current_thread().name)
        return check(pixels)

    monkeypatch.setattr(pyfunc_module, "check_fundus", recording_check)
    model = _with_batcher(classifier)
    rows = model.score_images([_good(1), _black()])
    assert [name.startswith("eye-model-aside") for name in threads] == [True]
    assert rows[0].fundus_check == "pass" and rows[0].probabilities is not None
    assert rows[1].fundus_check == "too_dark" and rows[1].probabilities is None
    assert "not a gradable fundus photograph" in (rows[1].error or "")


def test_a_failing_helper_thread_costs_no_verdict(
    classifier: EyeDiseaseClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _with_batcher(classifier)

    def broken(batch: list[ScoredImage], pixels: np.ndarray) -> list[str]:
        raise RuntimeError("the helper thread failed")

    monkeypatch.setattr(model, "_aside_work", broken)
    rows = model.score_images([_good(2), _black()])
    assert rows[0].fundus_check == "pass" and rows[0].error is None
    assert rows[1].fundus_check == "too_dark" and rows[1].probabilities is None
