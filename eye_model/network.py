"""Keras network builders.

Every network takes RGB images as float32 in 0-255 (shape ``(size, size, 3)``)
and returns class **logits** in the order of ``CLASS_NAMES``; probabilities are
``softmax(logits / temperature)``, the temperature being fitted after training.
The layer before the logits is named ``embedding``: the drift monitor
summarises it.

This module knows nothing about MLflow.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from eye_model.config import CLASS_NAMES, DEFAULT_IMAGE_SIZE

#: Backbones accepted by :func:`build_network`.
BACKBONES: tuple[str, ...] = ("small_cnn", "efficientnet_b0", "mobilenet_v3_small")

#: Name of the penultimate layer whose output is the image embedding.
EMBEDDING_LAYER = "embedding"
#: Name of the output layer (logits).
LOGITS_LAYER = "logits"
#: The small CNN's layer that explanations read (:mod:`eye_model.explain`): its last block at
#: an eighth of the input resolution, cells of 8 px. The last block's cells are 16 px, wider
#: than an optic disc at 96 px.
EXPLAIN_LAYER = "b3b_relu"


def resolve_weights(weights: str | None) -> str | None:
    """Map the ``weights`` parameter to what ``keras.applications`` expects.

    Args:
        weights: ``none`` (random initialisation), ``imagenet`` (downloaded by Keras,
            needs network access) or the path of a weights file.

    Returns:
        None, "imagenet" or the file path.

    Raises:
        ValueError: for a path that does not exist, naming it.
    """
    if weights is None or str(weights).strip().lower() in ("", "none", "null", "random"):
        return None
    if str(weights).strip().lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ValueError(
            f"weights={weights!r} is neither 'none', 'imagenet' nor an existing weights file; "
            "pass one of those"
        )
    return str(path)


def _conv_block(
    x: keras.KerasTensor, filters: int, *, strides: int = 1, name: str
) -> keras.KerasTensor:
    x = layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    # BatchNorm's moving statistics lag behind fast-changing weights on short CPU
    # trainings; recalibrate_batchnorm() recomputes them before every validation.
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_small_cnn(
    image_size: int = DEFAULT_IMAGE_SIZE, num_classes: int = len(CLASS_NAMES), width: float = 1.0
) -> keras.Model:
    """Build the default network: a small CNN with a strided stem, fast on two CPU cores.

    Global average and max pooling are concatenated: average pooling carries global
    signs (haze, colour), max pooling keeps small ones (microaneurysms, exudates).

    Args:
        image_size: side of the square input, in pixels.
        num_classes: number of output logits.
        width: multiplier of every convolution's filters (as MobileNet's alpha); below 1 the
            network is cheaper, which ``scripts/benchmark_predict.py --raw-batch-ms`` uses
            to stand for a faster CPU.

    Returns:
        An uncompiled Keras model, input float32 0-255, output logits.
    """

    def filters(count: int) -> int:
        return max(4, round(count * width))

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    # Two strided convolutions bring 224 px to 56 px cheaply: on two CPU cores the stem
    # decides whether a ten-minute training is realistic.
    x = _conv_block(x, filters(24), strides=2, name="stem")
    x = _conv_block(x, filters(32), strides=2, name="b1a")
    x = _conv_block(x, filters(48), name="b2a")
    x = layers.MaxPooling2D(name="b2_pool")(x)
    x = _conv_block(x, filters(96), name="b3a")
    x = _conv_block(x, filters(96), name="b3b")
    x = layers.MaxPooling2D(name="b3_pool")(x)
    x = _conv_block(x, filters(128), name="b4a")
    pooled = layers.Concatenate(name="pool")(
        [layers.GlobalAveragePooling2D(name="gap")(x), layers.GlobalMaxPooling2D(name="gmp")(x)]
    )
    x = layers.Dropout(0.3, name="dropout")(pooled)
    x = layers.Dense(64, activation="relu", name=EMBEDDING_LAYER)(x)
    logits = layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name="small_cnn")


def build_backbone_network(
    backbone: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    weights: str | None = None,
    num_classes: int = len(CLASS_NAMES),
) -> keras.Model:
    """Build a ``keras.applications`` backbone with a new classification head.

    Both backbones include their own input scaling, so they take 0-255 like the small CNN.

    Args:
        backbone: ``efficientnet_b0`` or ``mobilenet_v3_small``.
        image_size: side of the square input, in pixels.
        weights: ``none``, ``imagenet`` or a weights file path (see :func:`resolve_weights`).
        num_classes: number of output logits.

    Returns:
        An uncompiled Keras model, input float32 0-255, output logits.
    """
    resolved = resolve_weights(weights)
    shape = (image_size, image_size, 3)
    if backbone == "efficientnet_b0":
        base = keras.applications.EfficientNetB0(
            include_top=False, weights=resolved, input_shape=shape, pooling="avg"
        )
    elif backbone == "mobilenet_v3_small":
        base = keras.applications.MobileNetV3Small(
            include_top=False,
            weights=resolved,
            input_shape=shape,
            pooling="avg",
            include_preprocessing=True,
        )
    else:
        raise ValueError(f"backbone={backbone!r} is unknown; use one of {', '.join(BACKBONES)}")
    inputs = keras.Input(shape, name="image")
    x = base(inputs)
    x = layers.Dropout(0.2, name="dropout")(x)
    x = layers.Dense(128, activation="relu", name=EMBEDDING_LAYER)(x)
    logits = layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name=backbone)


def build_network(
    backbone: str = "small_cnn",
    image_size: int = DEFAULT_IMAGE_SIZE,
    weights: str | None = None,
    num_classes: int = len(CLASS_NAMES),
) -> keras.Model:
    """Build the network named by ``backbone``.

    Args:
        backbone: one of :data:`BACKBONES`.
        image_size: side of the square input, in pixels.
        weights: for ``keras.applications`` backbones: ``none``, ``imagenet`` or a
            weights file; for ``small_cnn``, ``none`` or a file saved by Keras.
        num_classes: number of output logits.

    Returns:
        An uncompiled Keras model.
    """
    if backbone == "small_cnn":
        model = build_small_cnn(image_size, num_classes)
        resolved = resolve_weights(weights)
        if resolved == "imagenet":
            raise ValueError("backbone=small_cnn has no ImageNet weights; use weights=none")
        if resolved:
            model.load_weights(resolved)
        return model
    return build_backbone_network(backbone, image_size, weights, num_classes)


#: Share of each training label spread over the other classes (Szegedy et al. 2016): the
#: network is not pushed towards infinite logits, so images unlike the training set are
#: less likely to come out at confidence 1.00.
LABEL_SMOOTHING = 0.1


@keras.saving.register_keras_serializable(package="eye_model")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against logits, with label smoothing.

    Keras's sparse cross-entropy has no label smoothing; this one-hot encodes the labels
    and uses the categorical loss, so ``class_weight`` and sample weights work as usual.
    """

    def __init__(self, label_smoothing: float = LABEL_SMOOTHING, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.label_smoothing = float(label_smoothing)
        self._loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=self.label_smoothing, reduction=None
        )

    def call(self, y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> keras.KerasTensor:
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        one_hot = keras.ops.one_hot(labels, keras.ops.shape(y_pred)[-1])
        return self._loss(one_hot, y_pred)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def recalibrate_batchnorm(network: keras.Model, pixels: np.ndarray, batch_size: int = 64) -> int:
    """Recompute BatchNorm moving statistics from ``pixels`` with the current weights.

    Training for a few hundred steps leaves the moving averages behind the weights:
    a network seen at 90 % training accuracy can predict one class in inference mode.
    Each batch's statistics are averaged with equal weight (momentum (i-1)/i), so the
    result is the mean over all of ``pixels``. Weights other than the statistics
    are not changed.

    Args:
        network: the Keras network.
        pixels: images (n, size, size, 3), uint8 or float 0-255, without augmentation.
        batch_size: images per forward pass.

    Returns:
        The number of BatchNorm layers recalibrated.
    """
    norms = [
        layer
        for layer in _all_layers(network)
        if isinstance(layer, layers.BatchNormalization) and layer.trainable
    ]
    if not norms or len(pixels) == 0:
        return 0
    saved = [layer.momentum for layer in norms]
    try:
        for i, start in enumerate(range(0, len(pixels), batch_size), start=1):
            for layer in norms:
                layer.momentum = (i - 1) / i
            network(np.asarray(pixels[start : start + batch_size], np.float32), training=True)
    finally:
        for layer, momentum in zip(norms, saved, strict=True):
            layer.momentum = momentum
    return len(norms)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def build_embedding_model(network: keras.Model) -> keras.Model:
    """Return a model with two outputs, ``(logits, embedding)``, sharing ``network``'s layers."""
    embedding = network.get_layer(EMBEDDING_LAYER).output
    return keras.Model(
        network.inputs, [network.output, embedding], name=f"{network.name}_with_embedding"
    )
