"""Where training runs: one device, several GPUs of one machine, or a cluster of workers.

* ``TF_CONFIG`` describing a cluster of two or more workers →
  ``tf.distribute.MultiWorkerMirroredStrategy``: every worker runs the same ``train``
  command on the same data; the chief (task ``chief``, or ``worker`` 0 when there is no
  chief) logs to MLflow and registers, the others train in step and log nothing.
* several GPUs visible → ``tf.distribute.MirroredStrategy``.
* otherwise → TensorFlow's default strategy (no change).

On a GPU the network trains in mixed precision (``mixed_float16``). Whatever the
strategy and precision, the network that leaves training is a plain float32 copy
(:meth:`TrainingPlacement.single_device`): calibration, the reference profile and the
logged pyfunc never see distributed variables, and a model trained on GPUs serves on a
CPU in float32.

``batch_size`` stays the global batch: each of n replicas computes batch_size / n images
per step, so a cluster run follows the same recipe as a single-worker one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: The kinds of placement (the ``distribution`` tag of a training run).
PLACEMENTS = ("single", "mirrored", "multi_worker")


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a ``TF_CONFIG`` cluster.

    Attributes:
        workers: processes that train (``chief`` and ``worker`` tasks).
        task_type: ``chief``, ``worker`` (or another TF task type).
        task_index: the index within its type.
        workers_without_chief: the cluster has no ``chief`` task (worker 0 leads).
    """

    workers: int
    task_type: str
    task_index: int
    workers_without_chief: bool = True

    @property
    def is_chief(self) -> bool:
        """The chief task, or worker 0 of a cluster without one (TensorFlow's rule)."""
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and self.workers_without_chief
        )


def parse_tf_config(tf_config: str) -> ClusterTask | None:
    """Read a ``TF_CONFIG`` value; None when it is empty or names a one-worker cluster.

    Args:
        tf_config: the JSON text, e.g. ``{"cluster": {"worker": ["host1:2222",
            "host2:2222"]}, "task": {"type": "worker", "index": 0}}``.

    Returns:
        The task, or None when there is nothing to distribute.

    Raises:
        ValueError: for text that is not such JSON, naming TF_CONFIG and the fix.
    """
    if not tf_config.strip():
        return None
    try:
        spec = json.loads(tf_config)
        cluster = spec.get("cluster") or {}
        task = spec.get("task") or {}
        chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
        found = ClusterTask(
            workers=chiefs + workers,
            task_type=str(task.get("type", "")),
            task_index=int(task.get("index", 0)),
            workers_without_chief=chiefs == 0,
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"TF_CONFIG is not a cluster description ({exc}); set it to JSON like "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
            '"task": {"type": "worker", "index": 0}} or unset it'
        ) from None
    if found.workers < 2:
        return None
    if found.task_type not in ("chief", "worker"):
        raise ValueError(
            f"TF_CONFIG names task type {found.task_type!r}; eye-model trains with "
            "'chief' and 'worker' tasks only"
        )
    return found


@dataclass
class TrainingPlacement:
    """The strategy training runs under, and whether this process is the one that logs.

    Attributes:
        kind: one of :data:`PLACEMENTS`.
        strategy: the ``tf.distribute.Strategy``.
        is_chief: this process logs to MLflow and registers.
        replicas: replicas in sync (devices x workers).
        mixed_precision: the network trains in ``mixed_float16``.
    """

    kind: str
    strategy: Any
    is_chief: bool = True
    replicas: int = 1
    mixed_precision: bool = False

    def scope(self) -> Any:
        """The strategy's scope: build and compile the network inside it."""
        return self.strategy.scope()

    def prepare(self, network: Any) -> Any:
        """Make a compiled network ready to ``fit`` under this placement; returns it."""
        if self.kind == "multi_worker":
            _build_from_local_batch(network)
        return network

    def single_device(self, network: Any, build: Callable[[], Any]) -> Any:
        """A plain float32 copy of a network trained under this placement.

        Every worker of a cluster must call this at the same point: reading distributed
        variables may be a collective operation. After it, nothing is collective any
        more, so the chief alone can calibrate, profile and log.

        Args:
            network: the trained network.
            build: builds an untrained network of the same architecture.

        Returns:
            ``network`` itself on a single device in float32; else a copy.
        """
        if self.kind == "single" and not self.mixed_precision:
            return network
        import keras

        weights = network.get_weights()
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")
        try:
            plain = build()
        finally:
            keras.config.set_dtype_policy(previous)
        plain.set_weights(weights)
        return plain

    def tags(self) -> dict[str, str]:
        """Tags of the training run that say where it trained."""
        return {
            "distribution": self.kind,
            "distribution.replicas": str(self.replicas),
            "mixed_precision": str(self.mixed_precision).lower(),
        }


# Keras 3 (through 3.15 at least) cannot fit under MultiWorkerMirroredStrategy
# (keras-team/keras issue 20585): it averages the first input batch across workers to
# build the model, and averages scalar metrics along an axis they do not have. The two
# functions below replace those steps; tests/model/test_distributed.py trains two
# workers, so a Keras release that changes them fails there.


def _build_from_local_batch(network: Any) -> None:
    """Build the optimizer and metrics from this worker's share of the first batch."""
    import types

    from keras.src import tree

    def maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self.distribute_strategy
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda x: strategy.experimental_local_results(x)[0], next(batches)
                )
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    network._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, network)


def _average_scalar_metrics_across_workers() -> None:
    """Average each step's metrics over all workers (every worker then sees the same logs)."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "eye_model_patch", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0),
                values,
            )
        return original(values, strategy, reduction)

    reduce_per_replica.eye_model_patch = True  # type: ignore[attr-defined]
    trainer.reduce_per_replica = reduce_per_replica


_PLACEMENT: list[TrainingPlacement] = []


def training_placement(tf_config: str = "") -> TrainingPlacement:
    """The placement of this process's training, chosen once per process.

    TensorFlow allows one ``MultiWorkerMirroredStrategy`` per process, created before
    other TensorFlow work; later calls return the first placement.

    Args:
        tf_config: the ``TF_CONFIG`` value (``Settings.tf_config``).

    Returns:
        The placement.
    """
    if _PLACEMENT:
        return _PLACEMENT[0]
    import keras
    import tensorflow as tf

    task = parse_tf_config(tf_config)
    gpus = tf.config.list_physical_devices("GPU")
    if task is not None:
        # Reads TF_CONFIG itself (TensorFlow's own resolver), as every worker must.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _average_scalar_metrics_across_workers()
        placement = TrainingPlacement(
            "multi_worker", strategy, task.is_chief, strategy.num_replicas_in_sync
        )
        logger.info(
            "training on %d workers (%s %d, chief: %s)",
            task.workers,
            task.task_type,
            task.task_index,
            task.is_chief,
        )
    elif len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        placement = TrainingPlacement("mirrored", strategy, True, strategy.num_replicas_in_sync)
    else:
        placement = TrainingPlacement("single", tf.distribute.get_strategy())
    if gpus:
        keras.config.set_dtype_policy("mixed_float16")
        placement.mixed_precision = True
    _PLACEMENT.append(placement)
    return placement
