"""Option types and option sets shared by the ``eye-model`` commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.types import BoolParamType

#: A boolean option value: true/false, yes/no, 1/0 (MLproject passes booleans as text).
BOOL = BoolParamType()


def training_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The parameters shared by the ``train`` and ``main`` entry points."""
    options = [
        click.option("--data-dir", default="", help="ImageFolder dataset root; empty: synthetic."),
        click.option(
            "--synthetic-per-class", type=int, default=300, help="Synthetic images per class."
        ),
        click.option("--image-size", type=int, default=224, help="Network input side, in pixels."),
        click.option(
            "--backbone",
            type=click.Choice(["small_cnn", "efficientnet_b0", "mobilenet_v3_small"]),
            default="small_cnn",
            help="Network architecture.",
        ),
        click.option("--weights", default="none", help="none, imagenet or a weights file."),
        click.option(
            "--epochs", type=int, default=25, help="Most epochs (early stopping may end sooner)."
        ),
        click.option("--batch-size", type=int, default=32, help="Images per training step."),
        click.option(
            "--learning-rate",
            type=float,
            default=2e-3,
            help="Peak Adam learning rate (warm-up, then cosine decay).",
        ),
        click.option(
            "--seed", type=int, default=42, help="Seed of data, split and initialisation."
        ),
        click.option("--register-as", default="", help="Register under this name; empty: do not."),
        click.option(
            "--folds",
            type=int,
            default=0,
            help="k-fold cross-validation (nested runs) before the final fit; 0: off.",
        ),
        click.option(
            "--resume",
            default="",
            help="Continue this interrupted training run (same run, its own parameters) "
            "from its last checkpoint; empty: a new run.",
        ),
        click.option(
            "--epochs-frozen",
            type=int,
            default=5,
            help="Pretrained backbone: epochs training only the new head, backbone frozen.",
        ),
        click.option(
            "--fine-tune-layers",
            type=int,
            default=30,
            help="Pretrained backbone: last layers fine-tuned (BatchNorm stays frozen); 0: none.",
        ),
        click.option(
            "--fine-tune-learning-rate",
            type=float,
            default=1e-5,
            help="Pretrained backbone: peak learning rate of fine-tuning.",
        ),
        click.option(
            "--augment",
            type=BOOL,
            default="true",
            help="Augment training images on the fly (flips, rotations, crops, colour).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function
