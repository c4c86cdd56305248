"""The pyfunc model in process: round trip, output contract, bad rows, threads, batching."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from eye_model.config import CLASS_NAMES, PROB_COLUMNS
from eye_model.pyfunc import ModelConfig, log_model
from eye_model.scored import OUTPUT_COLUMNS
from tests.code.test_preprocess import CORPUS
from tests.conftest import TINY_IMAGE_SIZE
from tests.helpers import b64, draw_fundus_like, encode


@pytest.fixture(scope="module")
def model(tiny_model_path: Path) -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(str(tiny_model_path))


def _images(n: int, size: int = 120) -> list[str]:
    return [b64(encode(draw_fundus_like(size, seed=i), "JPEG")) for i in range(n)]


def test_round_trip_output_contract(model: mlflow.pyfunc.PyFuncModel) -> None:
    frame = pd.DataFrame({"image": _images(5), "image_id": [f"id-{i}" for i in range(5)]})
    out = model.predict(frame)
    assert list(out.columns) == ["image_id", *OUTPUT_COLUMNS]
    assert out["image_id"].tolist() == [f"id-{i}" for i in range(5)]
    probs = out[list(PROB_COLUMNS)].to_numpy(dtype=float)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert out["predicted_class"].tolist() == [CLASS_NAMES[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(out["confidence"].to_numpy(float), probs.max(axis=1))
    assert out["error"].isna().all()


def test_without_image_id_the_column_is_left_out(model: mlflow.pyfunc.PyFuncModel) -> None:
    out = model.predict(pd.DataFrame({"image": _images(2)}))
    assert list(out.columns) == list(OUTPUT_COLUMNS)


def test_network_output_matches_keras(model: mlflow.pyfunc.PyFuncModel, tiny_network) -> None:
    """The compiled serving function computes what the Keras network computes."""
    from eye_model.preprocess import decode_image

    images = _images(3)
    pixels = np.stack([decode_image(v, TINY_IMAGE_SIZE).pixels for v in images])
    logits = np.asarray(tiny_network(pixels.astype(np.float32), training=False))
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out = model.predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(out[list(PROB_COLUMNS)].to_numpy(float), expected, atol=1e-5)


def test_aligned_batches_reach_the_network_without_a_copy(
    model: mlflow.pyfunc.PyFuncModel,
) -> None:
    """Aligned batches are shared with TensorFlow; any other array is copied, same result."""
    from eye_model.inference import TENSOR_ALIGNMENT, aligned_stack
    from eye_model.preprocess import decode_image

    runner = model.unwrap_python_model().runner
    pixels = [decode_image(v, TINY_IMAGE_SIZE).pixels for v in _images(5)]
    batch = aligned_stack(pixels)
    assert batch.ctypes.data % TENSOR_ALIGNMENT == 0
    np.testing.assert_array_equal(batch, np.stack(pixels))
    shared = runner._as_tensor(batch)
    batch[0, 0, 0, 0] ^= 0xFF
    assert int(shared[0, 0, 0, 0]) == int(batch[0, 0, 0, 0])  # the same memory
    batch[0, 0, 0, 0] ^= 0xFF
    # Misaligned by one byte: TensorFlow would abort on it, so it must take a copy.
    spare = np.empty(batch.nbytes + TENSOR_ALIGNMENT + 1, np.uint8)
    start = next(i for i in range(1, TENSOR_ALIGNMENT) if (spare.ctypes.data + i) % 8)
    misaligned = spare[start : start + batch.nbytes].reshape(batch.shape)
    misaligned[...] = batch
    assert misaligned.ctypes.data % TENSOR_ALIGNMENT != 0
    copied = runner._as_tensor(misaligned)
    misaligned[0, 0, 0, 0] ^= 0xFF
    assert int(copied[0, 0, 0, 0]) == int(batch[0, 0, 0, 0])  # a copy
    misaligned[0, 0, 0, 0] ^= 0xFF
    read_only = aligned_stack(pixels)  # aligned, but NumPy will not export it read-only
    read_only.flags.writeable = False
    for other in (misaligned, read_only):
        for got, want in zip(runner.run(other), runner.run(batch), strict=True):
            np.testing.assert_array_equal(got, want)


#: Decodable rows of the corpus that are grey: not colour fundus photographs, so refused.
GREY_ROWS = frozenset({"png_la", "png_bilevel", "png_16bit_gray", "jpeg_grayscale", "tiff_float"})


def test_one_bad_row_never_fails_the_batch(model: mlflow.pyfunc.PyFuncModel) -> None:
    values = [value for _, value, _ in CORPUS]
    # Strings and bytes go through the signature; other types are checked by predict itself.
    frame = pd.DataFrame({"image": pd.Series(values, dtype=object)})
    out = model.unwrap_python_model().predict(None, frame)
    assert len(out) == len(CORPUS)
    for (name, _, expected), row in zip(CORPUS, out.to_dict("records"), strict=True):
        if name in GREY_ROWS:
            assert expected is None, name
            assert row["fundus_check"] == "not_colour_fundus", name
            assert row["error"].startswith("not a gradable fundus photograph"), name
            assert row["predicted_class"] is None, name
        elif expected is None:
            assert row["fundus_check"] == "pass", name
            assert row["error"] is None, name
            assert row["predicted_class"] in CLASS_NAMES, name
            assert sum(row[c] for c in PROB_COLUMNS) == pytest.approx(1.0), name
        else:
            assert expected.replace("\\", "") in row["error"], (name, row["error"])
            assert row["predicted_class"] is None, name
            assert all(row[c] is None for c in ("confidence", *PROB_COLUMNS)), name


@pytest.mark.parametrize(
    "image_ids",
    [
        None,
        pd.Series([f"id-{i}" for i in range(len(CORPUS) - 1)] + [None], dtype="str"),
        pd.Series(range(len(CORPUS)), dtype="int64"),
        pd.Series([f"id-{i}" if i % 3 else None for i in range(len(CORPUS))], dtype=object),
    ],
    ids=["no-ids", "str-with-missing", "int", "object"],
)
def test_served_records_give_the_json_of_the_output_frame(
    model: mlflow.pyfunc.PyFuncModel, image_ids: pd.Series | None
) -> None:
    """In the scoring server predict returns records; the server must write the same JSON."""
    import io

    from mlflow.pyfunc.scoring_server import predictions_to_json

    python = model.unwrap_python_model()
    images = pd.Series([value for _, value, _ in CORPUS], dtype=object)
    inputs = pd.DataFrame(
        {"image": images} if image_ids is None else {"image": images, "image_id": image_ids}
    )
    frame = python.predict(None, inputs)
    python._serving = True  # as in the scoring server
    try:
        records = python.predict(None, inputs)
    finally:
        python._serving = False
    assert isinstance(records, list)
    as_frame, as_records = io.StringIO(), io.StringIO()
    predictions_to_json(frame, as_frame)
    predictions_to_json(records, as_records)
    assert as_records.getvalue() == as_frame.getvalue()
    assert "NaN" not in as_records.getvalue()  # a missing id is null, valid JSON
    if image_ids is not None:
        assert [r["image_id"] for r in records] == [None if pd.isna(v) else v for v in image_ids]
    assert [list(record) for record in records] == [list(frame.columns)] * len(CORPUS)
    assert 5 <= frame["error"].isna().sum() < len(CORPUS)  # scored and failed rows


@pytest.mark.parametrize("dtype", ["str", "string[pyarrow]", "large_string[pyarrow]"])
def test_text_held_by_arrow_is_read_in_place_with_the_same_results(
    model: mlflow.pyfunc.PyFuncModel, dtype: str
) -> None:
    """Base64 in an Arrow column is decoded from views of its buffer, row for row as text."""
    import pyarrow as pa

    from eye_model.input_frame import image_cells
    from eye_model.preprocess import Base64Text

    cases = [(name, value) for name, value, _ in CORPUS if value is None or isinstance(value, str)]
    values = ["padding", *(value for _, value in cases)]
    arrow = {"str": "str", "string[pyarrow]": pd.ArrowDtype(pa.string())}.get(
        dtype, pd.ArrowDtype(pa.large_string())
    )
    column = pd.Series(values, dtype=arrow)[1:]  # a slice: its Arrow chunk has an offset
    cells = image_cells(column)
    assert [type(c) for c in cells] == [type(None) if v is None else Base64Text for _, v in cases]
    python = model.unwrap_python_model()
    in_place = python.predict(None, pd.DataFrame({"image": column}))
    as_text = python.predict(None, pd.DataFrame({"image": pd.Series(values[1:], dtype=object)}))
    assert in_place["error"].tolist() == as_text["error"].tolist()
    assert in_place["error"].isna().sum() >= 5  # the valid images were scored, not refused
    pd.testing.assert_frame_equal(in_place, as_text)


def test_missing_image_column_names_the_expected_column(model: mlflow.pyfunc.PyFuncModel) -> None:
    with pytest.raises(MlflowException, match="image"):
        model.predict(pd.DataFrame({"picture": _images(1)}))
    with pytest.raises(MlflowException, match="column 'image'"):
        model.unwrap_python_model().predict(None, pd.DataFrame({"picture": _images(1)}))


def test_batches_larger_than_one_network_call_keep_order(
    model: mlflow.pyfunc.PyFuncModel,
) -> None:
    images = _images(70, size=80)
    together = model.predict(pd.DataFrame({"image": images}))
    alone = pd.concat([model.predict(pd.DataFrame({"image": [v]})) for v in images[::10]])
    np.testing.assert_allclose(
        together[list(PROB_COLUMNS)].to_numpy(float)[::10],
        alone[list(PROB_COLUMNS)].to_numpy(float),
        atol=1e-5,
    )


def test_predict_is_thread_safe(model: mlflow.pyfunc.PyFuncModel) -> None:
    frames = [pd.DataFrame({"image": _images(6, size=90 + 10 * k)}) for k in range(4)]
    expected = [model.predict(f) for f in frames]
    results: dict[int, pd.DataFrame] = {}
    failures: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                results[k] = model.predict(frames[k])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    for k in range(4):
        pd.testing.assert_frame_equal(results[k], expected[k], atol=1e-6)


def test_copies_of_a_model_share_one_compiled_network_and_other_models_do_not(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """spark_udf loads a copy of the model in every task: the network is built once."""
    import keras

    from eye_model.network import build_network
    from eye_model.pyfunc import save_model

    first = mlflow.pyfunc.load_model(str(tiny_model_path)).unwrap_python_model()
    copy = shutil.copytree(tiny_model_path, tmp_path / "copy")
    assert mlflow.pyfunc.load_model(str(copy)).unwrap_python_model().runner is first.runner

    keras.utils.set_random_seed(1)
    other_network = build_network("small_cnn", TINY_IMAGE_SIZE)
    other_path = save_model(tmp_path / "other", other_network, ModelConfig(TINY_IMAGE_SIZE))
    other = mlflow.pyfunc.load_model(str(other_path)).unwrap_python_model()
    assert other.runner is not first.runner
    frame = pd.DataFrame({"image": _images(3)})
    ours = first.predict(None, frame)[list(PROB_COLUMNS)].to_numpy(float)
    theirs = other.predict(None, frame)[list(PROB_COLUMNS)].to_numpy(float)
    assert np.abs(ours - theirs).max() > 1e-3

    # The same weights with another calibration temperature are another model too.
    warmer = save_model(
        tmp_path / "warmer", other_network, ModelConfig(TINY_IMAGE_SIZE, temperature=3.0)
    )
    assert mlflow.pyfunc.load_model(str(warmer)).unwrap_python_model().runner is not other.runner


@pytest.mark.parametrize(
    ("damage", "named", "reason"),
    [
        ("cut network", "network.keras", "it is not a complete .keras file"),
        ("no network", "network.keras", "FileNotFoundError"),
        ("garbage network", "network.keras", "it is not a complete .keras file"),
        ("cut config", "config.json", "JSONDecodeError"),
        ("config of another kind", "config.json", "TypeError"),
    ],
)
def test_a_damaged_model_file_fails_loading_with_one_line_naming_it(
    tiny_model_path: Path, tmp_path: Path, damage: str, named: str, reason: str
) -> None:
    """A model copied half-way must not die on Keras's "File not found" for a file that is there."""
    from eye_model.inference import ModelFileError

    copy = shutil.copytree(tiny_model_path, tmp_path / "copy")
    network, config = copy / "artifacts" / "network.keras", copy / "artifacts" / "config.json"
    if damage == "cut network":
        network.write_bytes(network.read_bytes()[: network.stat().st_size // 2])
    elif damage == "no network":
        network.unlink()
    elif damage == "garbage network":
        network.write_bytes(b"<html>403 Forbidden</html>")
    elif damage == "cut config":
        config.write_text(config.read_text()[:20])
    else:
        config.write_text('{"classes": 4}')
    with pytest.raises(ModelFileError) as raised:
        mlflow.pyfunc.load_model(str(copy))
    message = str(raised.value)
    assert "\n" not in message
    assert f"cannot load the model's {'network' if 'network' in damage else 'config'} file" in (
        message
    )
    assert str(copy / "artifacts" / named) in message
    assert reason in message
    assert message.endswith("download, register or log it again")


def test_logged_model_has_signature_example_and_code(tiny_network) -> None:
    with mlflow.start_run() as run:
        info = log_model(tiny_network, ModelConfig(image_size=TINY_IMAGE_SIZE))
    assert info.signature.inputs.input_names() == ["image", "image_id"]
    assert "predicted_class" in info.signature.outputs.input_names()
    loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    example = loaded.input_example
    assert list(example.columns) == ["image", "image_id"]
    out = loaded.predict(example)
    assert out["error"].isna().all()
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model"))
    assert (local / "code" / "eye_model" / "pyfunc.py").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "mlflow==3.17.2" in requirements
    assert "tensorflow==" in requirements


# -- request limits ------------------------------------------------------------------------


def _served_copy(model: mlflow.pyfunc.PyFuncModel, **attributes: object) -> object:
    """A copy of the loaded classifier behaving as in the scoring server, without telemetry."""
    import copy

    served = copy.copy(model.unwrap_python_model())
    served._serving = True
    served._telemetry = None
    for name, value in attributes.items():
        setattr(served, name, value)
    return served


def test_rows_past_the_request_pixel_budget_get_an_error_naming_it(
    model: mlflow.pyfunc.PyFuncModel,
) -> None:
    images = [b64(encode(draw_fundus_like(100, seed=i), "PNG")) for i in range(5)]
    served = _served_copy(model, max_request_pixels=3 * 100 * 100)
    records = served.predict(None, pd.DataFrame({"image": images}))
    errors = [row["error"] for row in records]
    assert sum(error is None for error in errors) == 3
    refused = [error for error in errors if error is not None]
    assert len(refused) == 2
    for error in refused:
        assert "more than 0.03 MP of decoded pixels (EYE_MODEL_MAX_REQUEST_PIXELS)" in error
        assert "send the remaining images in another request" in error
    # Outside the scoring server (evaluation, batch scoring) there is no request budget.
    unlimited = _served_copy(model, max_request_pixels=1, _serving=False)
    assert unlimited.predict(None, pd.DataFrame({"image": images}))["error"].isna().all()


def test_no_decode_starts_after_half_the_server_timeout(
    model: mlflow.pyfunc.PyFuncModel, caplog: pytest.LogCaptureFixture
) -> None:
    """A request the server would give up on is answered with errors, and never logged."""

    class Recorder:
        records: list[object] = []

        def record(self, rows: list[object], **kwargs: object) -> None:
            self.records.extend(rows)

    served = _served_copy(model, scoring_timeout_s=0)
    served._telemetry = Recorder()
    with caplog.at_level("WARNING", logger="eye_model.pyfunc"):
        records = served.predict(None, pd.DataFrame({"image": _images(3)}))
    for row in records:
        assert "reached its time limit (0 s, half of the model server's 0 s timeout" in row["error"]
    assert Recorder.records == []  # the client got HTTP 504: nothing is logged as delivered
    assert "past the model server's 0 s timeout" in caplog.text
    # Inside the time limit the same request is scored and recorded.
    served.scoring_timeout_s = 60
    records = served.predict(None, pd.DataFrame({"image": _images(3)}))
    assert [row["error"] for row in records] == [None, None, None]
    assert len(Recorder.records) == 3


def test_large_decodes_share_the_worker_memory_budget(model: mlflow.pyfunc.PyFuncModel) -> None:
    from eye_model.decode_budget import MemoryBudget

    budget = MemoryBudget(3 * 1024 * 1024, small=1024 * 1024)  # two 1.5 MB decodes at once
    served = _served_copy(model, _memory=budget)
    images = [b64(encode(draw_fundus_like(700, seed=i), "PNG")) for i in range(6)]
    records = served.predict(None, pd.DataFrame({"image": images}))
    assert all(row["error"] is None for row in records)
    assert 0 < budget.peak <= budget.limit
    assert budget.held == 0
