"""Evaluation: classification metrics, probability calibration, and the plots a reviewer reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from eye_model.config import CLASS_NAMES


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fit the softmax temperature that minimises the negative log-likelihood (Guo et al. 2017).

    Args:
        logits: (n, classes) network outputs on held-out data (the validation split).
        labels: (n,) true class indices.

    Returns:
        The temperature (> 0); probabilities are softmax(logits / temperature).
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, int)

    def nll(log_t: float) -> float:
        log_p = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-log_p[np.arange(len(labels)), labels].mean())

    # Bounded below at 0.5: on a validation split the network gets all right, the
    # likelihood keeps rising as the temperature falls to 0, and the model would leave
    # with near-certain probabilities for images unlike its training set.
    result = minimize_scalar(nll, bounds=(np.log(0.5), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), row-wise."""
    return softmax(np.asarray(logits, np.float64) / temperature, axis=1)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    """Expected calibration error of the top-class confidence, with equal-width bins.

    Args:
        probabilities: (n, classes), rows summing to 1.
        labels: (n,) true class indices.
        bins: number of confidence bins over 0-1.

    Returns:
        ECE in 0-1 (the share-weighted gap between confidence and accuracy).
    """
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    prefix: str = "test_",
    failed: np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and one-vs-rest ROC AUC.

    Args:
        labels: (n,) true class indices.
        probabilities: (n, classes); rows of failed images are ignored.
        prefix: prepended to every metric name.
        failed: (n,) True where the model gave no answer; such a row counts as wrong
            (a miss of its true class), never as the class of an all-zero row.

    Returns:
        ``{prefix}accuracy``, ``{prefix}macro_f1``, ``{prefix}precision_<class>``,
        ``{prefix}recall_<class>``, ``{prefix}f1_<class>``, ``{prefix}roc_auc_macro``
        (over the scored rows).
    """
    labels = np.asarray(labels, int)
    probabilities = np.asarray(probabilities, np.float64)
    failed = np.zeros(len(labels), bool) if failed is None else np.asarray(failed, bool)
    # -1 is no class: a failed row is wrong for accuracy and a miss for its class's recall.
    predicted = np.where(failed, -1, np.nan_to_num(probabilities, nan=0.0).argmax(axis=1))
    everything = list(range(len(CLASS_NAMES)))
    metrics = {
        f"{prefix}accuracy": float(accuracy_score(labels, predicted)),
        f"{prefix}macro_f1": float(
            f1_score(labels, predicted, labels=everything, average="macro", zero_division=0)
        ),
    }
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=everything, zero_division=0
    )
    for k, name in enumerate(CLASS_NAMES):
        metrics[f"{prefix}precision_{name}"] = float(precision[k])
        metrics[f"{prefix}recall_{name}"] = float(recall[k])
        metrics[f"{prefix}f1_{name}"] = float(f1[k])
    scored = ~failed
    if len(np.unique(labels[scored])) == len(CLASS_NAMES):
        metrics[f"{prefix}roc_auc_macro"] = float(
            roc_auc_score(labels[scored], probabilities[scored], multi_class="ovr", average="macro")
        )
    return metrics


def _figure(width: float = 6.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def plot_training_curves(history: Mapping[str, Sequence[float]]):
    """Loss and accuracy per epoch, training against validation."""
    fig, ax = _figure(9, 4)
    ax.remove()
    loss_ax = fig.add_subplot(1, 2, 1)
    acc_ax = fig.add_subplot(1, 2, 2)
    for key, axis in (("loss", loss_ax), ("accuracy", acc_ax)):
        for split, style in (("", "-"), ("val_", "--")):
            values = history.get(f"{split}{key}")
            if values:
                epochs = np.arange(1, len(values) + 1)
                axis.plot(epochs, values, style, label=f"{'validation' if split else 'training'}")
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.legend()
    fig.tight_layout()
    return fig


def plot_confusion_matrix(labels: np.ndarray, predicted: np.ndarray):
    """Confusion matrix with counts, rows true class, columns predicted class."""
    matrix = confusion_matrix(labels, predicted, labels=list(range(len(CLASS_NAMES))))
    fig, ax = _figure(6, 5)
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=30, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def plot_roc_curves(labels: np.ndarray, probabilities: np.ndarray):
    """One-vs-rest ROC curve of each class."""
    fig, ax = _figure()
    for k, name in enumerate(CLASS_NAMES):
        positives = np.asarray(labels) == k
        if positives.any() and not positives.all():
            fpr, tpr, _ = roc_curve(positives, probabilities[:, k])
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_reliability(labels: np.ndarray, before: np.ndarray, after: np.ndarray, bins: int = 10):
    """Reliability diagram: accuracy against confidence, before and after temperature scaling."""
    fig, ax = _figure()
    edges = np.linspace(0, 1, bins + 1)
    for probabilities, name in ((before, "uncalibrated"), (after, "calibrated")):
        confidence = probabilities.max(axis=1)
        correct = probabilities.argmax(axis=1) == labels
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            if (which == b).any():
                xs.append(confidence[which == b].mean())
                ys.append(correct[which == b].mean())
        ax.plot(xs, ys, "o-", label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    return fig


def score_files(model_uri: str, paths: Sequence[str], chunk: int = 256):
    """Score image files with a logged model, sending them as a REST client would (base64).

    Args:
        model_uri: any MLflow model URI.
        paths: image files.
        chunk: files read and scored at a time, so memory does not grow with ``paths``.

    Returns:
        The model's output frame, one row per file.
    """
    import base64

    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    frames = []
    for start in range(0, max(len(paths), 1), chunk):
        encoded = [
            base64.b64encode(Path(p).read_bytes()).decode("ascii")
            for p in paths[start : start + chunk]
        ]
        frames.append(model.predict(pd.DataFrame({"image": encoded})))
    return pd.concat(frames, ignore_index=True)


def evaluate_model_on_folder(model_uri: str, data_dir: str | Path) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class figures of a model on an ImageFolder set.

    Rows the model could not score count as wrong.
    """
    from eye_model.config import PROB_COLUMNS
    from eye_model.data import discover_images

    files = discover_images(data_dir)
    scored = score_files(model_uri, files["path"].tolist())
    failed = scored["error"].notna().to_numpy()
    probabilities = scored[list(PROB_COLUMNS)].astype(float).to_numpy()
    labels = files["label"].map(CLASS_NAMES.index).to_numpy()
    metrics = classification_metrics(labels, probabilities, prefix="", failed=failed)
    metrics["n"] = float(len(files))
    metrics["errors"] = float(failed.sum())
    return metrics
