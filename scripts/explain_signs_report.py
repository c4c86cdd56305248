"""Do a model's explanations point at the signs? Measured on generated photographs.

For each disease class, generates ``--per-class`` photographs at the model's input size
(the generator knows where it put the lesions and the optic disc), explains each for its
class and prints the share of images with at least half of the map's mass on the sign:
over the images the model classifies right (what a served heatmap of the predicted class
shows; goal >= 0.8) and over all of them.

Usage::

    python scripts/explain_signs_report.py MODEL_URI [--per-class 40] [--seed 99]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_uri")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=99)
    args = parser.parse_args(argv)

    import mlflow

    from eye_model.explain import SIGN_MIN_SHARE, sign_coverage

    model = mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model()
    figures = sign_coverage(model.runner, args.per_class, args.seed)
    print(f"model {args.model_uri}, {model.config.image_size} px, {args.per_class} per class")
    met = True
    for label, f in figures.items():
        ok = f.on_sign >= SIGN_MIN_SHARE
        met = met and ok
        print(
            f"{label:21s} on sign {f.on_sign:.2f} of {f.right} classified right "
            f"({'ok' if ok else 'below'} {SIGN_MIN_SHARE}), {f.on_sign_all:.2f} of all; "
            f"median mass {f.median_mass:.2f} on {f.median_area:.3f} of the picture "
            f"({f.enrichment:.1f} x even); recall {f.recall:.2f}"
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
